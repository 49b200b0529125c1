"""tuimon's in-process agent: live metrics from a PyTorch training loop to the tuimon viewer, and a durable run file.

Usage::

    import tuimon_agent

    mon = tuimon_agent.watch(model, optimizer, run="digits-cnn")
    for x, y in loader:
        ...
        optimizer.step()
        mon.log(loss=loss, acc=acc)
    mon.close()

This package never imports textual or rich, and imports torch only when handed torch objects.
"""

from .monitor import Monitor, watch
from .protocol import PROTOCOL_VERSION

__version__ = "0.1.0"

__all__ = ["Monitor", "watch", "PROTOCOL_VERSION", "__version__"]
