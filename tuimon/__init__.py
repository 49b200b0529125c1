"""tuimon: a live terminal monitor for PyTorch training (the viewer half)."""
