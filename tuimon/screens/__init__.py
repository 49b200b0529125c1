"""The viewer's screens, one per module."""

from .help import HelpScreen
from .overview import OverviewScreen
from .pick_run import PickRun

__all__ = ["HelpScreen", "OverviewScreen", "PickRun"]
