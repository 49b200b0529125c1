"""A HuggingFace ``transformers.TrainerCallback`` that streams a ``Trainer`` run to tuimon:
``Trainer(..., callbacks=[TuimonCallback()])``.

Needs ``transformers>=4.40`` (``pip install tuimon-agent[hf]``). Importing :mod:`tuimon_agent` does not import
this module.

What it records:

- at ``on_train_begin``, :func:`tuimon_agent.watch` of the model and the real torch optimizer (the Trainer hands
  callbacks accelerate's ``AcceleratedOptimizer``, which watch() unwraps and names) and its LR scheduler (so a
  live ``set_lr`` persists under it), with the callback's keyword options;
- each optimizer step's values and statistics carry their own step although the Trainer logs only every
  ``logging_steps`` (the monitor counts optimizer steps itself);
- ``on_log``: the logged dict under HF's names (``loss``, ``learning_rate``, ``grad_norm``, ``epoch``, ...) as a
  ``metrics`` record at ``state.global_step``; keys with an evaluation prefix (``eval_loss``, ``eval_runtime``,
  ``test_...``) as an ``eval`` record instead, prefix kept (the viewer pairs ``eval_loss`` with ``loss``);
- a live ``stop`` command sets ``control.should_training_stop`` at the next ``on_step_end``;
- the run is closed at ``on_train_end`` (an uncaught exception closes it through the monitor's own hook).

Only the main process publishes: on other ranks :func:`~tuimon_agent.watch` only follows rank 0's commands.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from .. import watch
from ..monitor import Monitor
from . import is_eval_name, is_scalar

__all__ = ["TuimonCallback"]


class TuimonCallback(TrainerCallback):
    """Streams a ``transformers.Trainer`` run to tuimon viewers and a run file, without slowing down training.

    Example::

        trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[TuimonCallback(run="gpt2-tiny")])
        trainer.train()

    Args:
        **options: Keyword options of :func:`tuimon_agent.watch` (``run=``, ``dir=``, ``stats_every=``,
            ``hist_every=``, ``scheduler=``, ...), passed through unchanged.

    Attributes:
        monitor: The :class:`~tuimon_agent.Monitor` of the current ``train()`` (``None`` before it starts).
    """

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.monitor: Monitor | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Called at the beginning of training: watch the model and the real optimizer."""
        if self.monitor is not None:
            self.monitor.close()
        optimizer = kwargs.get("optimizer")  # accelerate's wrapper: watch() unwraps it
        options = dict(self.options)
        scheduler = kwargs.get("lr_scheduler")
        if "scheduler" not in options and scheduler is not None:
            options["scheduler"] = getattr(
                scheduler, "scheduler", scheduler
            )  # accelerate's AcceleratedScheduler
        self.monitor = watch(kwargs.get("model"), optimizer, **options)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Called after each optimizer step: a ``stop`` command ends training."""
        mon = self.monitor
        if mon is None or not mon.enabled:
            return
        try:
            if mon.should_stop:
                control.should_training_stop = True
        except Exception as exc:  # never into the training loop
            mon._fail(exc)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        """Called when the Trainer logs: training values as ``metrics``, ``eval_*`` values as ``eval``."""
        mon = self.monitor
        if mon is None or not mon.enabled or not logs or not state.is_world_process_zero:
            return
        try:
            step = int(state.global_step)
            train = {k: v for k, v in logs.items() if is_scalar(v) and not is_eval_name(k)}
            evals = {k: v for k, v in logs.items() if is_scalar(v) and is_eval_name(k)}
            if evals and "epoch" in train:
                evals["epoch"] = train.pop("epoch")
            if train:
                mon.log(train, step=step)
            if evals:
                mon.log_eval(evals, step=step)
        except Exception as exc:
            mon._fail(exc)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Called at the end of training: close the run (flushes the run file)."""
        mon, self.monitor = self.monitor, None
        if mon is not None:
            mon.close()
