"""The viewer's widgets, one per module."""

from .alert_panel import AlertPanel
from .check_details import CheckDetails
from .checks_table import ChecksTable
from .feature_maps import FeatureMaps
from .grad_heatmap import GradHeatmap
from .hist_view import HistView
from .layer_table import LayerTable
from .metric_chart import MetricChart
from .metric_list import MetricList
from .metric_row import MetricRow
from .notice_bar import NoticeBar
from .run_header import RunHeader
from .run_info import RunInfo

__all__ = [
    "AlertPanel",
    "CheckDetails",
    "ChecksTable",
    "FeatureMaps",
    "GradHeatmap",
    "HistView",
    "LayerTable",
    "MetricChart",
    "MetricList",
    "MetricRow",
    "NoticeBar",
    "RunHeader",
    "RunInfo",
]
