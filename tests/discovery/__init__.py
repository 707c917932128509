"""Tests of lion_integrations.discovery, one module per package module."""
