"""The viewer's screens, one per module."""

from .checks import ChecksScreen
from .help import HelpScreen
from .layers import LayersScreen
from .overview import OverviewScreen
from .pick_run import PickRun
from .run_info import RunInfoScreen

__all__ = ["ChecksScreen", "HelpScreen", "LayersScreen", "OverviewScreen", "PickRun", "RunInfoScreen"]
