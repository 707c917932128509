"""Where the adapter's INFO lines go, so that they show wherever the user asked for transformers' info logs.

A stock script (transformers' ``run_clm.py``) turns on INFO with ``--log_level info`` through
``transformers.utils.logging.set_verbosity``, which sets transformers' own library logger only; the
logger of any other library stays at the root logger's WARNING. The line saying which optimizer the
Trainer built would then never show. `info_logger` sends it through transformers' logging (its
verbosity, handler and format) in that case, and through our logger otherwise.
"""

from __future__ import annotations

import logging

from transformers.utils import logging as transformers_logging


def info_logger(logger: logging.Logger) -> logging.Logger:
    """`logger` when it shows INFO (the user configured ``lion_integrations`` or the root logger);
    else, when transformers' verbosity shows INFO, ``transformers.<logger name>`` (a logger inside
    transformers' hierarchy); else `logger` (nothing shows, as the user asked)."""
    if logger.isEnabledFor(logging.INFO):
        return logger
    inside_transformers = transformers_logging.get_logger(f"transformers.{logger.name}")
    return inside_transformers if inside_transformers.isEnabledFor(logging.INFO) else logger
