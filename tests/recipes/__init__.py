"""Tests of the recipes, one module per recipe."""
