"""A Lightning ``Callback`` that streams a ``Trainer.fit`` to tuimon: ``Trainer(callbacks=[TuimonCallback()])``.

Needs ``lightning>=2.0`` (``pip install tuimon-agent[lightning]``), or the older ``pytorch_lightning`` package when
``lightning`` is not installed. Importing :mod:`tuimon_agent` does not import this module.

What it records:

- at ``on_train_start``, :func:`tuimon_agent.watch` of the ``LightningModule`` and the trainer's first optimizer
  (``trainer.optimizers`` holds the real torch optimizers; a ``LightningOptimizer`` wrapper is unwrapped), with the
  callback's keyword options;
- after each optimizer step (a new ``trainer.global_step``), a ``metrics`` record at that step: the training
  step's ``loss`` (from the batch outputs) and what the module logged with ``self.log`` on step since the previous
  record (from ``trainer.callback_metrics``; validation metrics left out);
- at the end of each training epoch, the epoch aggregates (``self.log(..., on_epoch=True)``) at the current global
  step, as Lightning names them (``x_epoch`` when ``x`` is also logged on step);
- at the end of each validation run (not the sanity check), the metrics that validation logged, as an ``eval``
  record at the current global step, under the names they were logged with (``val_loss`` pairs with ``loss``);
- a live ``stop`` command sets ``trainer.should_stop`` (Lightning ends the fit after the current batch);
- the run is closed at ``on_fit_end``, or with reason ``"exception"`` / ``"interrupted"`` in ``on_exception``.

Under DDP only global rank 0 publishes (``$RANK`` is set from ``trainer.global_rank`` when Lightning's launcher left
it unset); the other ranks follow rank 0's live commands.
"""

from __future__ import annotations

import os
from typing import Any

from .. import watch
from ..monitor import Monitor, _warn
from . import is_eval_name, is_scalar

try:
    from lightning.pytorch import Callback
except ImportError:  # pragma: no cover - the older package name
    from pytorch_lightning import Callback

__all__ = ["TuimonCallback"]


class TuimonCallback(Callback):
    """Streams a Lightning training run to tuimon viewers and a run file, without slowing down training.

    Example::

        trainer = lightning.Trainer(max_epochs=3, callbacks=[TuimonCallback(run="mnist")])
        trainer.fit(model, train_loader, val_loader)

    Args:
        **options: Keyword options of :func:`tuimon_agent.watch` (``run=``, ``dir=``, ``stats_every=``,
            ``hist_every=``, ``alerts=``, ...), passed through unchanged.

    Attributes:
        monitor: The :class:`~tuimon_agent.Monitor` of the current fit (``None`` before ``on_train_start``).
    """

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.options = options
        self.monitor: Monitor | None = None
        self._last_step = -1
        self._eval_names: set[str] = set()
        self._before_val: dict[str, Any] = {}
        self._recorded: dict[str, Any] = {}

    # -- hooks -------------------------------------------------------------------------------------------------

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Called when training starts: watch the module and its optimizer."""
        if self.monitor is not None:
            self.monitor.close()
        optimizers = list(getattr(trainer, "optimizers", None) or [])
        optimizer = optimizers[0] if optimizers else None
        if len(optimizers) > 1:
            _warn(
                f"TuimonCallback: the module has {len(optimizers)} optimizers; only the first "
                f"({type(optimizer).__name__}) is watched (statistics, live commands)"
            )
        self._last_step = int(trainer.global_step)
        self._eval_names = set()
        self._recorded = {}
        rank = int(getattr(trainer, "global_rank", 0) or 0)
        if rank and not os.environ.get("RANK"):
            # Lightning's own launchers set LOCAL_RANK but not RANK, which watch() reads: only rank 0 publishes.
            os.environ["RANK"] = str(rank)
        self.monitor = watch(pl_module, optimizer, **self.options)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Called after each training batch: log the step's metrics once per optimizer step; honour ``stop``."""
        mon = self.monitor
        if mon is None or not mon.enabled:
            return
        try:
            step = int(trainer.global_step)
            if step != self._last_step:
                self._last_step = step
                mon.log(self._train_values(trainer, outputs), step=step)
            if mon.should_stop:
                trainer.should_stop = True
        except Exception as exc:  # never into the training loop
            mon._fail(exc)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Called when a training epoch ends: record the epoch aggregates the module logged (``on_epoch=True``) at the
        current global step, under Lightning's names (``x_epoch`` for a metric logged on step too)."""
        mon = self.monitor
        if mon is None or not mon.enabled:
            return
        try:
            metrics = trainer.callback_metrics
            values = {}
            for k, v in metrics.items():
                if k in self._eval_names or is_eval_name(k) or not is_scalar(v) or not self._fresh(k, v):
                    continue
                # the plain name of a metric logged on step and on epoch: its x_epoch twin says it
                if metrics.get(f"{k}_epoch") is v:
                    continue
                values[k] = v
            if values:
                mon.log(values, step=int(trainer.global_step))
        except Exception as exc:
            mon._fail(exc)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        """Called when validation starts: remember the metrics as they are, to tell which ones validation logs."""
        if self.monitor is not None and not trainer.sanity_checking:
            self._before_val = dict(trainer.callback_metrics)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        """Called when validation ends: record what it logged as an ``eval`` record at the current global step."""
        mon = self.monitor
        if mon is None or not mon.enabled or trainer.sanity_checking:
            return
        try:
            before = self._before_val
            metrics = trainer.callback_metrics
            values = {
                k: v
                for k, v in metrics.items()
                if (before.get(k) is not v or is_eval_name(k)) and not _epoch_twin(k, metrics)
            }
            self._before_val = {}
            values = {k: v for k, v in values.items() if is_scalar(v)}
            if values:
                self._eval_names.update(values)
                mon.log_eval(values, step=int(trainer.global_step))
        except Exception as exc:
            mon._fail(exc)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        """Called when fit ends: close the run (flushes the run file)."""
        self._close("closed")

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Called when fit raises: close the run with the reason."""
        self._close("interrupted" if isinstance(exception, KeyboardInterrupt) else "exception")

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Called at the end of fit, validate, test, predict: make sure the run is closed."""
        if stage == "fit":
            self._close("closed")

    # -- internals ---------------------------------------------------------------------------------------------

    def _train_values(self, trainer: Any, outputs: Any) -> dict[str, Any]:
        """The training step's loss and the on-step metrics the module logged this step (tensors, read on the agent
        thread)."""
        values: dict[str, Any] = {}
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if is_scalar(loss):
            values["loss"] = loss.detach() if hasattr(loss, "detach") else loss
        metrics = trainer.callback_metrics
        for k, v in metrics.items():
            if (
                k in self._eval_names
                or is_eval_name(k)
                or k.endswith("_epoch")
                or (k.endswith("_step") and k[:-5] in metrics)
                or not is_scalar(v)
            ):
                continue
            if self._fresh(k, v):
                values[k] = v
        return values

    def _fresh(self, name: str, value: Any) -> bool:
        """Whether ``value`` is not the one last recorded under ``name``: ``callback_metrics`` keeps a metric's last
        value until it is logged again (an epoch aggregate all the next epoch). The last value recorded is held,
        so its storage stays allocated and the same data pointer means the same tensor."""
        prev = self._recorded.get(name)
        self._recorded[name] = value
        ptr = getattr(value, "data_ptr", None)
        if prev is None or not callable(ptr) or not callable(getattr(prev, "data_ptr", None)):
            return True
        return bool(prev.data_ptr() != ptr())

    def _close(self, reason: str) -> None:
        mon, self.monitor = self.monitor, None
        if mon is not None:
            mon.close(reason=reason)


def _epoch_twin(name: str, metrics: Any) -> bool:
    """``x_epoch`` when ``x`` holds the same value (a metric logged both on step and on epoch)."""
    return name.endswith("_epoch") and metrics.get(name[: -len("_epoch")]) is metrics.get(name)
