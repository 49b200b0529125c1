"""Where a run first went non-finite (NaN provenance, issue 3): one ``event`` with ``what = "nonfinite"`` per run.

This runs on the agent thread and imports numpy only. Three sources feed it, each proving what it can:

``replay`` (exact step and layer)
    On the CPU, :class:`~tuimon_agent.activations.ActStats` checks the output of every training-mode forward of the
    watched model (one ``isfinite`` over the output, read at once: nothing on the CPU is asynchronous). The first
    time it is not finite, it replays that forward right there, under ``no_grad``, from the same arguments and the
    CPU random state of the original (so dropout draws the same masks), with the measuring hooks on, and restores
    the buffers (BatchNorm statistics) and the random state afterwards. The replay names the first module *in call
    order* whose output is not finite and says why: the model's input was (``of = "input"``), one of that module's
    own parameters was (``"weight"``: every later forward is then non-finite from that layer on; all the modules
    with a non-finite parameter are listed), or only its output was (``"activation"``: an overflow in that layer).
    Because every forward before it was checked and finite, the step is the first whose forward went non-finite;
    a non-finite weight was written by the update of the step before (or directly between the two).
``loss``
    The first logged training value whose name contains ``loss`` that is not finite. Where every forward is
    checked and no replay came first, the model's output was finite at that step: the loss function itself made it
    non-finite (``of = "loss"``, exact). Elsewhere (a model on an accelerator, where reading the output every step
    would synchronise; ``activations=False``; ``torch.compile``) the agent asks the training thread to measure the
    next forward and optimizer step in full (``force``); that forced sample, a step or a few later, names the layer
    (``how = "forced"``) and the step reported is the loss's.
``sampled``
    A ``param_stats`` (or, where forwards are not checked, ``act_stats``) record of a sampled step with a non-finite
    entry: a gradient that went non-finite while the loss stayed finite (a backward overflow; an optimizer that
    skips such steps, like ``GradScaler``, keeps the weights finite). The step is the sampled one: the problem may
    have started up to ``stats_every − 1`` steps earlier (``exact = False``). Gradients flow backward, so the layer
    named is the *last* flagged one in model order: the first in backward order. With ``norms_every=1`` the
    ``grad_norms`` records of the steps in between are read the same way (``how = "norms"``), so every step's
    gradients are checked and a gradient that went non-finite first is reported at its exact step.

The record: ``{"what": "nonfinite", "message", "step", "first_step", "of", "layer", "param", "how", "exact",
"seen_at", "weights"}`` (``step`` equals ``first_step``; ``layer`` is a module name or ``None``; ``param`` a
parameter name or ``None``; ``seen_at`` the step whose measurement determined it; ``weights`` the modules with a
non-finite parameter, in call or model order, at most :data:`LIST_MAX`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

LIST_MAX = 32
"""Modules listed in ``weights`` at most."""


def _module(param: str) -> str:
    return param.rpartition(".")[0]


def record(
    *,
    first_step: int | None,
    of: str,
    how: str,
    exact: bool,
    seen_at: int | None,
    layer: str | None = None,
    param: str | None = None,
    weights: Sequence[str] = (),
    note: str = "",
) -> dict[str, Any]:
    """The ``event`` payload (``what = "nonfinite"``) with its one-line message.

    Args:
        first_step: The first step known to be non-finite.
        of: ``"loss"``, ``"gradient"``, ``"weight"``, ``"activation"`` or ``"input"``.
        how: ``"replay"``, ``"loss"``, ``"forced"`` or ``"sampled"``.
        exact: Whether ``first_step`` is proven to be the first (``False``: it may have started earlier).
        seen_at: The step whose measurement determined the layer.
        layer: The module, or ``None``.
        param: The parameter, or ``None``.
        weights: Modules with a non-finite parameter.
        note: Appended to the message.

    Returns:
        The payload.
    """
    where = f" in {param or layer}" if (param or layer) else ""
    msg = f"first non-finite {of} at step {first_step}{where}"
    if not exact:
        msg += f" (seen at sampled step {seen_at}; it may have started earlier)"
    if note:
        msg += f"; {note}"
    return {
        "what": "nonfinite",
        "message": msg,
        "step": first_step,
        "first_step": first_step,
        "of": of,
        "layer": layer,
        "param": param,
        "how": how,
        "exact": exact,
        "seen_at": seen_at,
        "weights": list(weights)[:LIST_MAX],
    }


class Provenance:
    """Decides the one ``nonfinite`` event of a run from what the agent thread reads (see the module docstring).

    Args:
        forward_checked: Every training-mode forward's output is checked on the training thread (CPU replay): a
            bool, or a callable asked each time (the training thread stops checking an output it cannot read).
        force: Called (on the agent thread) to have the training thread measure the next forward and optimizer
            step in full; ``None`` when there is nothing to force (statistics off).
        every: The sampling interval of ``param_stats`` (for the messages).
    """

    def __init__(
        self,
        *,
        forward_checked: bool | Callable[[], bool] = False,
        force: Callable[[], None] | None = None,
        every: int = 0,
    ) -> None:
        self.forward_checked = forward_checked
        self.force = force
        self.every = every
        self.norms_every: int | None = None
        """The interval of ``grad_norms`` records in between samples (``watch(..., norms_every=N)``), or None."""
        self.done = False
        self._loss_step: int | None = None
        self._acts: tuple[int | None, str | None, bool] | None = None
        self._pending: tuple[int | None, dict[str, Any]] | None = None
        self._acts_step: int | None = None

    def _checked(self) -> bool:
        v = self.forward_checked
        return bool(v()) if callable(v) else bool(v)

    def _finish(self, data: dict[str, Any] | None) -> dict[str, Any] | None:
        if data is not None:
            self.done = True
        return data

    def on_replay(self, step: int | None, found: dict[str, Any]) -> dict[str, Any] | None:
        """The training thread's replay of the first non-finite forward (``found``: ``layer``, ``of``,
        ``weights``)."""
        if self.done:
            return None
        of, layer, weights = found["of"], found.get("layer"), found.get("weights", [])
        note = ""
        if of == "weight":
            prev = step - 1 if isinstance(step, int) else None
            note = f"the forward of step {prev} was finite: written by the update of step {prev} or directly"
            if len(weights) > 1:
                note += (
                    f"; {len(weights)} modules have non-finite weights, the last in call order {weights[-1]}"
                )
        elif of == "input":
            note = "the model's input was not finite"
        elif found.get("note"):
            note = str(found["note"])
        elif layer is None:
            note = "no watched module's output was non-finite in the replay (not reproduced, or outside them)"
        return self._finish(
            record(
                first_step=step,
                of=of,
                how="replay",
                exact=True,
                seen_at=step,
                layer=layer,
                weights=weights,
                note=note,
            )
        )

    def on_loss(self, step: int | None, values: dict[str, float]) -> dict[str, Any] | None:
        """Every logged training record: the first non-finite ``*loss*`` value."""
        if self.done or self._loss_step is not None:
            return None
        bad = [k for k, v in values.items() if "loss" in k.lower() and not math.isfinite(v)]
        if self._pending is not None:
            pstep, prec = self._pending
            if not (bad and step == pstep):  # the sampled gradients went non-finite with a finite loss
                if step is None or pstep is None or step >= pstep:
                    self._pending = None
                    return self._finish(prec)
                return None
            self._pending = None  # the loss of that very step was non-finite: it came first
            note = f"{bad[0]}={values[bad[0]]}; every gradient of step {step} followed"
            return self._finish(
                record(
                    first_step=step,
                    of="loss",
                    how="loss",
                    exact=self._checked(),
                    seen_at=step,
                    note=note,
                )
            )
        if not bad:
            return None
        if self._checked():
            note = f"{bad[0]}={values[bad[0]]}; the model's output at that step was finite: the loss function"
            return self._finish(
                record(first_step=step, of="loss", how="loss", exact=True, seen_at=step, note=note)
            )
        if self.force is None:
            note = f"{bad[0]}={values[bad[0]]}; no statistics to say where"
            return self._finish(
                record(first_step=step, of="loss", how="loss", exact=True, seen_at=step, note=note)
            )
        self._loss_step = step if isinstance(step, int) else 0
        self.force()
        return None

    def on_acts(
        self,
        step: int | None,
        nonfinite: np.ndarray,
        order: Sequence[int],
        names: Sequence[str],
        input_bad: bool,
    ) -> None:
        """An ``act_stats`` measurement (sampled or forced): remembered until that step's ``param_stats``."""
        if self.done or self._checked():
            return
        self._acts_step = step
        layer = next((names[i] for i in order if i < len(nonfinite) and nonfinite[i]), None)
        if layer is None and not input_bad:
            self._acts = None
            return
        self._acts = (step, layer, input_bad)

    def flush(self) -> dict[str, Any] | None:
        """The run ended: a verdict still waiting for its step's loss is final, and a non-finite loss whose forced
        measurement never came (the run ended first) is reported as the loss."""
        if self.done:
            return None
        if self._loss_step is not None:
            note = "the run ended before a forced measurement could say where"
            return self._finish(
                record(
                    first_step=self._loss_step,
                    of="loss",
                    how="loss",
                    exact=True,
                    seen_at=self._loss_step,
                    note=note,
                )
            )
        if self._pending is None:
            return None
        rec, self._pending = self._pending[1], None
        return self._finish(rec)

    def on_norms(self, step: int | None, data: dict[str, Any], names: Sequence[str]) -> dict[str, Any] | None:
        """A ``grad_norms`` record (a step in between samples, ``norms_every``): a non-finite gradient is
        reported like a sampled one, waiting for that step's logged loss; exact when every step is measured."""
        # A non-finite loss came first: the forced sample decides.
        if self.done or self._loss_step is not None:
            return None
        n = min(len(names), len(data["grad_nonfinite"]))
        bad_grad = [names[i] for i in range(n) if data["grad_nonfinite"][i]]
        if bad_grad:
            if self._pending is not None:  # an earlier step's gradient is already waiting: it came first
                return None
            p = bad_grad[-1]  # gradients flow backward: the last in model order is the first to go bad
            extra = (
                f"{len(bad_grad)} gradients non-finite, the last in model order named"
                if len(bad_grad) > 1
                else ""
            )
            rec = record(
                first_step=step,
                of="gradient",
                how="norms",
                exact=self.norms_every == 1 or self.every == 1,
                seen_at=step,
                layer=_module(p),
                param=p,
                note=extra,
            )
            self._pending = (step, rec)
            return None
        if self._pending is not None and self._pending[0] != step:
            rec, self._pending = self._pending[1], None
            return self._finish(rec)
        return None

    def on_stats(self, step: int | None, data: dict[str, Any], names: Sequence[str]) -> dict[str, Any] | None:
        """A ``param_stats`` record (sampled or forced)."""
        if self.done:
            return None
        n = min(len(names), len(data["grad_nonfinite"]))
        bad_grad = [names[i] for i in range(n) if data["grad_nonfinite"][i]]
        wb = data.get("weight_nonfinite")
        # Weights non-finite before the step (what the forward used), or only after it (the update made them so).
        before = [names[i] for i in range(n) if wb is not None and wb[i]]
        after = ~np.isfinite(np.asarray(data["weight_norm"][:n]))
        bad_weight = before + [names[i] for i in range(n) if after[i] and names[i] not in before]
        modules_bad = list(dict.fromkeys(_module(p) for p in before))
        acts = self._acts if self._acts is not None and self._acts[0] == step else None
        forced = self._loss_step is not None
        first = self._loss_step if forced else step
        how = "forced" if forced else "sampled"
        note = f"the loss was non-finite first; measured at step {step}" if forced else ""

        def weight_record(params: list[str], layer: str | None = None, extra: str = "") -> dict[str, Any]:
            return record(
                first_step=first,
                of="weight",
                how=how,
                exact=False,
                seen_at=step,
                layer=layer or _module(params[0]),
                param=None if layer else params[0],
                weights=list(dict.fromkeys(_module(p) for p in params)),
                note="; ".join(x for x in (note, extra) if x),
            )

        if acts is not None:
            _s, layer, input_bad = acts
            if layer is not None and layer in modules_bad and not input_bad:
                return self._finish(weight_record(before, layer))
            of = "input" if input_bad else "activation"
            return self._finish(
                record(first_step=first, of=of, how=how, exact=forced, seen_at=step, layer=layer, note=note)
            )
        if before:
            return self._finish(weight_record(before))
        if forced:
            extra = f"{len(bad_grad)} gradients non-finite at step {step}" if bad_grad else ""
            if self._acts_step != step:
                extra = "; ".join(
                    x for x in (extra, "activations not measured (activations=False or compile)") if x
                )
            return self._finish(
                record(
                    first_step=first,
                    of="loss",
                    how=how,
                    exact=True,
                    seen_at=step,
                    note="; ".join(x for x in (f"no weight was non-finite at step {step}", extra) if x),
                )
            )
        if bad_grad:
            p = bad_grad[-1]  # gradients flow backward: the last in model order is the first to go bad
            extra = (
                f"{len(bad_grad)} gradients non-finite, the last in model order named"
                if len(bad_grad) > 1
                else ""
            )
            rec = record(
                first_step=first,
                of="gradient",
                how=how,
                exact=1 in (self.every, self.norms_every),  # every step measured: the one before was finite
                seen_at=step,
                layer=_module(p),
                param=p,
                note=extra,
            )
            # Wait for this step's logged loss: a non-finite loss makes every gradient non-finite, and came first.
            self._pending = (step, rec)
            return None
        if bad_weight:
            return self._finish(
                weight_record(bad_weight, extra=f"made non-finite by the update of step {step}")
            )
        if self._pending is not None and self._pending[0] != step:
            rec, self._pending = self._pending[1], None
            return self._finish(rec)
        return None
