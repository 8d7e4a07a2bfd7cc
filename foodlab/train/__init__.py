"""Training: the loop, one epoch, run folders and checkpoints, DDP and distillation."""
