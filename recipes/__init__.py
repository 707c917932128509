"""Runnable examples, each a script (``python recipes/NAME.py --help``).

A package only so that the scripts share `recipes.common` and `recipes.trainer_runs`: each script
puts the repository root first on ``sys.path`` before importing them.
"""
