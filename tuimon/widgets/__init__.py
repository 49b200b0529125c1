"""The viewer's widgets, one per module."""

from .metric_chart import MetricChart
from .metric_list import MetricList
from .metric_row import MetricRow
from .notice_bar import NoticeBar
from .run_header import RunHeader
from .run_info import RunInfo

__all__ = ["MetricChart", "MetricList", "MetricRow", "NoticeBar", "RunHeader", "RunInfo"]
