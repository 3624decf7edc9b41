"""The metric names a trial logs per epoch: one list, readable without importing torch or Lightning."""

METRICS = ("val/acc", "val/loss", "train/loss", "train/acc")
