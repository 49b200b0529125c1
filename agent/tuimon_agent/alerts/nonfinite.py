"""The ``nonfinite`` rule: a NaN or Inf in the loss, a gradient, a weight or an activation.

Statistic
    Any non-finite value in: the training loss of a ``metrics`` record; ``grad_nonfinite`` or a non-finite
    ``weight_norm`` of a ``param_stats`` record (weight matrices, biases, any parameter with a gradient); the
    ``nonfinite`` flags of an ``act_stats`` record; or an ``event`` with ``what = "nonfinite"`` (the agent's
    provenance: ``first_step``/``step`` and ``layer``/``module``/``param`` when present).
Onset and place
    ``first_step`` is the earliest step any source reports. The first report waits for that step to complete (the
    sampled gradients of a step arrive before its loss and the agent's provenance event), so that it names the
    origin, not the first symptom. The origin and layer are the provenance event's when there is one (no layer:
    the loss itself went non-finite, and the gradients followed);
    otherwise the first parameter in model order flagged at the earliest ``param_stats`` that showed one, else the
    first module flagged in ``act_stats``; when only the loss is non-finite, ``metric`` names the loss and
    ``layers`` is empty.
Severity and hysteresis
    ``critical`` from the first evidence (a NaN does not heal by itself: every later update is poisoned). Resolved
    only after :data:`CLEAN_LOSSES` consecutive finite losses *and* :data:`CLEAN_SAMPLES` consecutive clean
    ``param_stats`` and ``act_stats`` samples (for example after the user restored a checkpoint); an
    occasional skipped step of a mixed-precision ``GradScaler`` never reaches ``optimizer.step()``, so it is
    never seen here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import protocol
from ..protocol import Record
from .base import CRITICAL, Context, Finding, Rule, Window, set_clip, set_lr
from .layer_common import array, fnum

CLEAN_LOSSES = 50
"""Consecutive finite training losses needed to resolve the alert."""
CLEAN_SAMPLES = 3
"""Consecutive clean ``param_stats`` (and ``act_stats``) samples needed to resolve the alert."""

REMEDIES = [
    "Lower the learning rate (divide it by 10) and restart from the last finite checkpoint.",
    "Clip gradients (torch.nn.utils.clip_grad_norm_) to stop one bad batch from blowing up the weights.",
    "Look for log(0), division by zero, sqrt of a negative or exp overflow: add an epsilon, use log_softmax or "
    "CrossEntropyLoss on logits rather than log(softmax).",
    "Check the input batch and the labels for NaN/Inf values.",
    "With mixed precision, use torch.amp.GradScaler (or bfloat16) so that float16 does not overflow.",
]


class NonFinite(Rule):
    """NaN/Inf anywhere in the loss, gradients, weights or activations: critical, with the first step and layer."""

    name = "nonfinite"
    kinds = frozenset({protocol.METRICS, protocol.PARAM_STATS, protocol.ACT_STATS, protocol.EVENT})

    def __init__(self) -> None:
        self.on = False
        self.first_step: int | None = None
        self.layer: str | None = None
        self.layer_step: int | None = None
        self.layer_exact = False
        self.origin: str | None = None  # the provenance event's ``of``
        self.reported = False
        self.provenance: str | None = None  # the provenance event's message
        self.sources: dict[str, int] = {}  # source -> first step
        self.bad_params = 0
        self.bad_modules = 0
        self.loss_value: float | None = None
        self.clean_losses = 0
        self.clean_params = 0
        self.clean_acts = 0
        self.seen = {"loss": False, "params": False, "acts": False}  # which sources this run has
        self.grad_norms = Window(50)  # finite global grad norms before the trouble, for a clip value

    # -- evidence -------------------------------------------------------------------------------------------------

    def _evidence(
        self,
        source: str,
        step: int,
        layer: str | None = None,
        layer_step: int | None = None,
        exact: bool = False,
    ) -> None:
        self.sources.setdefault(source, step)
        if self.first_step is None or step < self.first_step:
            self.first_step = step
        if (
            exact
        ):  # the agent's provenance names the origin better than any sample (no layer: the loss did it)
            self.layer, self.layer_step, self.layer_exact, self.origin = layer, step, True, source
        elif (
            layer is not None
            and not self.layer_exact
            and (
                self.layer_step is None or (layer_step if layer_step is not None else step) < self.layer_step
            )
        ):
            self.layer, self.layer_step = layer, layer_step if layer_step is not None else step
        self.on = True
        self.clean_losses = self.clean_params = self.clean_acts = 0

    def feed(self, record: Record, ctx: Context) -> list[Finding] | None:
        """Read one record; report the alert while any non-finite value has been seen and not cleared."""
        step = record.step
        kind, d = record.kind, record.data
        if kind == protocol.EVENT:
            if d.get("what") != "nonfinite":
                return None
            first = d.get("first_step", d.get("step", step))
            if not isinstance(first, int) or isinstance(first, bool):
                first = step
            if first is None:
                return None
            layer = next(
                (d[k] for k in ("layer", "module", "param") if isinstance(d.get(k), str) and d[k]), None
            )
            of = d.get("of")
            if isinstance(d.get("message"), str):
                self.provenance = d["message"]
            self._evidence(str(of) if isinstance(of, str) else "event", first, layer, first, exact=True)
            return self._report(ctx, first if step is None else max(step, first))
        if step is None:
            return None
        if kind == protocol.METRICS:
            loss = ctx.loss_value(record)
            if loss is None:
                return None
            self.seen["loss"] = True
            if not math.isfinite(loss):
                self.loss_value = loss
                self._evidence("loss", step)
            elif self.on:
                self.clean_losses += 1
        elif kind == protocol.PARAM_STATS:
            n = len(ctx.params) or None
            bad_g = array(d, "grad_nonfinite", n)
            wn = array(d, "weight_norm", n)
            has = array(d, "has_grad", n)
            if bad_g is None:
                return None
            self.seen["params"] = True
            bad = bad_g > 0
            if wn is not None:
                bad |= ~np.isfinite(wn)
            if bad.any():
                first = int(np.argmax(bad))
                name = ctx.param_names[first] if first < len(ctx.param_names) else f"#{first}"
                self.bad_params = int(bad.sum())
                source = (
                    "weight"
                    if wn is not None and not math.isfinite(wn[first]) and not bad_g[first]
                    else "gradient"
                )
                self._evidence(source, step, name, step)
            else:
                g = d.get("global_grad_norm")
                if isinstance(g, (int, float)) and math.isfinite(g) and not self.on:
                    self.grad_norms.add(float(g), step)
                if self.on and (has is None or has.any()):
                    self.clean_params += 1
        elif kind == protocol.ACT_STATS:
            n = len(ctx.modules) or None
            flags = array(d, "nonfinite", n)
            if flags is None:
                return None
            self.seen["acts"] = True
            if (flags > 0).any():
                first = int(np.argmax(flags > 0))
                name = ctx.module_names[first] if first < len(ctx.module_names) else f"#{first}"
                self.bad_modules = int((flags > 0).sum())
                # A gradient/weight provenance names the layer better (activations follow from NaN weights).
                self._evidence("activation", step, name if self.layer is None else None, step)
            elif self.on:
                self.clean_acts += 1
        if not self.on:
            return None
        if not self.reported and not self.layer_exact and step <= (self.first_step or step):
            # The sampled gradients of a step reach us before its loss and the agent's provenance event: wait for
            # the step to complete so that the first report names the origin rather than the first symptom.
            return None
        if (
            (not self.seen["loss"] or self.clean_losses >= CLEAN_LOSSES)
            and (not self.seen["params"] or self.clean_params >= CLEAN_SAMPLES)
            and (not self.seen["acts"] or self.clean_acts >= CLEAN_SAMPLES)
        ):
            self._reset()
            return [self.resolved("global", step)]
        return self._report(ctx, step)

    def _reset(self) -> None:
        self.on = False
        self.first_step = self.layer = self.layer_step = self.loss_value = self.origin = self.provenance = (
            None
        )
        self.layer_exact = self.reported = False
        self.sources = {}
        self.bad_params = self.bad_modules = 0

    def _report(self, ctx: Context, step: int) -> list[Finding]:
        self.reported = True
        first = self.first_step if self.first_step is not None else step
        what = sorted(self.sources, key=lambda s: (s != self.origin, self.sources[s]))
        where = f" in {self.layer}" if self.layer else ""
        msg = f"non-finite values (NaN/Inf) since step {first}{where}: first in the {what[0]}"
        if len(what) > 1:
            msg += ", then in the " + ", ".join(what[1:])
        evidence: dict[str, Any] = {"first_step": first, "sources": ",".join(what)}
        if self.layer:
            evidence["layer"] = self.layer
        if self.bad_params:
            evidence["bad_params"] = self.bad_params
        if self.bad_modules:
            evidence["bad_modules"] = self.bad_modules
        if self.loss_value is not None:
            evidence["loss"] = str(self.loss_value)
        if self.provenance:
            evidence["provenance"] = self.provenance
        actions = []
        if ctx.lr is not None and ctx.lr > 0:
            actions.append(set_lr(ctx.lr / 10, f"a tenth of {fnum(ctx.lr)}"))
        if len(self.grad_norms):
            clip = self.grad_norms.quantile(0.9)
            if clip > 0:
                actions.append(set_clip(clip, "the 90th percentile of the finite gradient norms"))
        return [
            self.active(
                "global",
                step,
                severity=CRITICAL,
                first_step=first,
                layers=[self.layer] if self.layer else [],
                metric=ctx.loss_name if "loss" in self.sources else None,
                confidence=1.0,
                evidence=evidence,
                message=msg + ".",
                remedies=list(REMEDIES),
                actions=actions,
            )
        ]
