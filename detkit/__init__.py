"""detkit: two-stage object detection and instance segmentation in PyTorch."""

__version__ = "0.2.0"
