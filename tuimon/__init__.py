"""tuimon: a live terminal monitor for PyTorch training (the viewer half)."""

__version__ = "0.1.0"
