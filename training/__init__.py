"""Data sets, the training loop (single process and DDP), checkpoints, metrics and plots."""
