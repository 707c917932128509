"""Tests of lion_integrations.quantization, one module per package module."""
