"""The viewer's screens, one per module."""

from .checks import ChecksScreen
from .help import HelpScreen
from .overview import OverviewScreen
from .pick_run import PickRun

__all__ = ["ChecksScreen", "HelpScreen", "OverviewScreen", "PickRun"]
