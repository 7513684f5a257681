"""One training loop shared by all trainers: device, AMP, DDP, checkpoint/resume, logging."""
