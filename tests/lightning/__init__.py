"""Tests of the Lightning adapter: configure_lion, LionCallback, LightningCLI, checkpoints, DDP."""
