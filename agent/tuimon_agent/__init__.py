"""tuimon's in-process agent: live metrics from a PyTorch training loop to the tuimon viewer, and a durable run file.

Usage::

    import tuimon_agent

    mon = tuimon_agent.watch(model, optimizer, run="digits-cnn")
    for x, y in loader:
        ...
        optimizer.step()
        mon.log(loss=loss, acc=acc)
    mon.close()

Code written for TensorBoard streams here with ``from tuimon_agent import SummaryWriter``; Lightning and HuggingFace
callbacks are in :mod:`tuimon_agent.integrations`.

This package never imports textual or rich, and imports torch only when handed torch objects.
"""

from typing import TYPE_CHECKING, Any

from .monitor import Monitor, watch
from .protocol import PROTOCOL_VERSION

if TYPE_CHECKING:
    from .summary_writer import SummaryWriter

__version__ = "0.1.0"

__all__ = ["Monitor", "watch", "SummaryWriter", "PROTOCOL_VERSION", "__version__"]


def __getattr__(name: str) -> Any:
    # SummaryWriter is imported on first use only (PEP 562), so that importing the package stays light.
    if name == "SummaryWriter":
        from .summary_writer import SummaryWriter

        return SummaryWriter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
