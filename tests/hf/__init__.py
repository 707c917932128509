"""Tests of lion_integrations.hf: the optim names it registers, optim_args, and the Trainer."""
