"""``data_check``: what the model is about to be fed, before it is fed it.

It reads one batch ``(inputs, targets)``, or at most ``batches`` batches of a loader, and looks at the inputs per
channel (dim 1 of image-like ``N×C×...`` inputs; each feature of ``N×F`` tables), at the labels, and, when given
a validation set, at samples the two share.

How to read the result: ``table`` has a row per input channel (``channel`` or ``feature``: ``mean``, ``std``,
``min``, ``max``, ``nonfinite``), then a row per class (``class``, ``count``, ``fraction``), each capped at
:data:`MAX_ROWS`. ``numbers`` has the totals (``samples``, ``batches``, overall ``mean``/``std``/``min``/``max``,
``nan``/``inf``, ``std_ratio`` across channels, ``classes_seen``, ``missing_classes``, ``majority_fraction``,
``imbalance``, ``val_overlap`` ...). Each problem is a *finding* (``fail`` for a bug, ``warn`` for a suspicion);
the summary names the most serious, the explanation lists them all with what to do:

* inputs that are not normalized: raw 0–255 pixels, or features far from mean 0 / std 1 (see the thresholds
  below), or features on wildly different scales, or inputs scaled down twice;
* NaN or Inf in the inputs or targets; inputs and targets with different numbers of samples;
* labels outside ``range(num_classes)``, classes never seen, a single class everywhere (an unshuffled loader),
  strong class imbalance;
* validation samples identical to training samples (leakage).

Nothing is changed: the inputs are only read, the loader is read inside a forked RNG (a shuffled loader draws
its order from the global generator) with Python's and NumPy's RNG states restored afterwards.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from ._result import ERROR, FAIL, PASS, WARN, CheckResult

NAME = "data_check"
MAX_ROWS = 64
"""Rows per part of ``table`` (channels, classes)."""
PIXEL_MAX = 100.0
"""A channel whose largest value is at least this is not normalized (fail); with min ≥ 0 it looks like pixels."""
MEAN_LIMIT = 3.0
STD_LIMIT = 10.0
ABS_LIMIT = 20.0
"""Beyond any of these (|mean|, std, max |x| of a channel) the inputs are called unnormalized (warn)."""
TINY_LIMIT = 0.01
"""Every value below this in magnitude (but not all zero): scaled down twice (warn)."""
SPREAD_LIMIT = 1e3
"""Largest over smallest channel std beyond this: features on different scales (warn)."""
IMBALANCE_LIMIT = 10.0
"""Most over least frequent class beyond this: imbalanced (warn)."""
LABELS_PER_CLASS = 5
"""Labels per class needed before a class never seen is worth a warning (uniform labels miss one ~e^-5 of
the time), and, doubled, before imbalance is judged."""
_INPUT_KEYS = ("input", "inputs", "x", "image", "images", "data", "features")
_TARGET_KEYS = ("target", "targets", "label", "labels", "y")


@dataclass
class _Finding:
    verdict: str
    title: str
    advice: str


class _Stats:
    """Per-channel count, mean, sum of squared deviations, min, max, NaN and Inf, merged batch by batch."""

    def __init__(self) -> None:
        self.n: torch.Tensor | None = None
        self.mean = self.m2 = self.min = self.max = self.nan = self.inf = torch.zeros(0)

    def add(self, x: torch.Tensor) -> None:
        x = x.detach()
        if x.dim() >= 3:
            v = x.transpose(0, 1).reshape(x.shape[1], -1)
        elif x.dim() == 2:
            v = x.t()
        else:
            v = x.reshape(1, -1)
        v = v.float() if not v.is_floating_point() or v.dtype in (torch.float16, torch.bfloat16) else v
        lo, hi = v.amin(1), v.amax(1)  # NaN propagates, so these tell whether the slow masked path is needed
        if bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            var, mean = torch.var_mean(v, dim=1, correction=0)
            n = torch.full((v.shape[0],), float(v.shape[1]), dtype=torch.float64)
            nan = inf = torch.zeros(v.shape[0], dtype=torch.float64)
        else:
            finite = torch.isfinite(v)
            n = finite.sum(1).double()
            nan, inf = torch.isnan(v).sum(1).double(), torch.isinf(v).sum(1).double()
            zero = torch.zeros((), dtype=v.dtype)
            mean = torch.where(finite, v, zero).sum(1) / n.clamp(min=1).to(v.dtype)
            var = (torch.where(finite, v - mean[:, None], zero) ** 2).sum(1) / n.clamp(min=1).to(v.dtype)
            lo = torch.where(finite, v, torch.full((), float("inf"), dtype=v.dtype)).amin(1)
            hi = torch.where(finite, v, torch.full((), float("-inf"), dtype=v.dtype)).amax(1)
        n, nan, inf = n.cpu(), nan.cpu(), inf.cpu()  # merged on the CPU: a few numbers per channel
        mean, m2, lo, hi = mean.double().cpu(), var.double().cpu() * n, lo.double().cpu(), hi.double().cpu()
        if self.n is None:
            self.n, self.mean, self.m2, self.min, self.max, self.nan, self.inf = n, mean, m2, lo, hi, nan, inf
            return
        if n.shape != self.n.shape:
            raise _Unreadable(f"a batch has {n.shape[0]} channels where the first had {self.n.shape[0]}")
        total = self.n + n
        delta = mean - self.mean
        w = torch.where(total > 0, n / total.clamp(min=1), torch.zeros_like(n))
        self.m2 = self.m2 + m2 + delta**2 * self.n * w  # Chan et al.'s parallel variance update
        self.mean = self.mean + delta * w
        self.n, self.min, self.max = total, torch.minimum(self.min, lo), torch.maximum(self.max, hi)
        self.nan, self.inf = self.nan + nan, self.inf + inf


class _Unreadable(Exception):
    """The data is not something this check can read (an ``error`` result, not a user bug to flag)."""


def _tensor(x: Any, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if hasattr(x, "__array__"):
        return torch.as_tensor(x)
    raise _Unreadable(f"{what} is a {type(x).__name__}, not a tensor or array")


def _split(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` from a tensor, a tuple/list or a dict batch."""
    if isinstance(batch, dict):
        keys = {str(k).lower(): k for k in batch}
        x = next((batch[keys[k]] for k in _INPUT_KEYS if k in keys), None)
        y = next((batch[keys[k]] for k in _TARGET_KEYS if k in keys), None)
        if x is None:
            raise _Unreadable(f"a dict batch with none of the input keys {_INPUT_KEYS}")
        return x, y
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0], batch[1] if len(batch) > 1 else None
    return batch, None


def _hashes(x: torch.Tensor) -> list[bytes]:
    """One digest per sample: float samples compared as float32 (so float64 copies match), others exactly."""
    rows = x.detach().reshape(x.shape[0], -1).cpu() if x.dim() else x.reshape(1, 1)
    rows = rows.float() + 0.0 if rows.is_floating_point() else rows.long()  # + 0.0 turns -0.0 into 0.0
    tag = f"{rows.dtype}{tuple(x.shape[1:])}".encode()
    return [hashlib.blake2b(tag + r.numpy().tobytes(), digest_size=16).digest() for r in rows]


def _labels(y: torch.Tensor, n: int) -> torch.Tensor | None:
    """Class indices from integer targets, or from one 0/1 float target per sample; None for anything else."""
    if y.dtype == torch.bool or not (y.is_floating_point() or y.is_complex()):
        return y.reshape(-1).long()
    if y.is_floating_point() and y.numel() == n and bool(((y == 0) | (y == 1)).all()):
        return y.reshape(-1).long()
    return None


def data_check(
    inputs: Any = None,
    targets: Any = None,
    *,
    loader: Iterable[Any] | None = None,
    batches: int = 8,
    val: Any = None,
    num_classes: int | None = None,
) -> CheckResult:
    """Check a batch, or the first batches of a loader, for unnormalized inputs, NaN, label problems and leakage.

    Args:
        inputs: A batch's inputs (tensor or array; dim 0 is the batch). Give either this or ``loader``.
        targets: The batch's targets (class indices, 0/1 labels or regression values), optional.
        loader: An iterable of batches: ``(inputs, targets)`` tuples/lists, bare input tensors, or dicts with an
            ``input``/``image``/``x``… and a ``target``/``label``/``y``… key.
        batches: How many of the loader's batches to read, at most (a loader with worker processes may prefetch
            a few more; with ``num_workers=0`` exactly these are loaded).
        val: Validation data, ``(val_inputs, val_targets)`` or ``val_inputs``, to look for samples shared with
            what was read.
        num_classes: The number of classes, for classification targets: labels must lie in
            ``range(num_classes)`` and every class should appear.

    Returns:
        A ``data_check`` result; ``error`` if the data cannot be read (not tensors, a loader that raises).

    Raises:
        ValueError: Neither or both of ``inputs`` and ``loader``; ``batches``, ``num_classes`` or ``val`` invalid.
    """
    t0 = time.perf_counter()
    if (inputs is None) == (loader is None):
        which = "neither" if inputs is None else "both"
        raise ValueError(f"invalid inputs/loader ({which} given): pass a batch (inputs, targets) or loader=")
    if type(batches) is not int or batches < 1:
        raise ValueError(f"invalid batches={batches!r}: must be an int >= 1")
    if num_classes is not None and (type(num_classes) is not int or num_classes < 1):
        raise ValueError(f"invalid num_classes={num_classes!r}: must be an int >= 1 or None")
    if loader is not None and not isinstance(loader, Iterable):
        raise ValueError(f"invalid loader of type {type(loader).__name__}: must be iterable")
    if val is not None and not (
        isinstance(val, (tuple, list)) and len(val) in (1, 2) or hasattr(val, "__array__")
    ):
        raise ValueError(
            f"invalid val of type {type(val).__name__}: must be (inputs, targets) or an inputs tensor"
        )
    # A container of several inputs is not invalid, only unsupported: it gets an error verdict instead.
    if not (
        inputs is None
        or isinstance(inputs, (torch.Tensor, tuple, list, dict))
        or hasattr(inputs, "__array__")
    ):
        raise ValueError(f"invalid inputs of type {type(inputs).__name__}: must be a tensor or an array")
    try:
        return _run(inputs, targets, loader, batches, val, num_classes, t0)
    except _Unreadable as exc:
        return CheckResult(
            NAME,
            ERROR,
            f"could not read the data: {exc}",
            "data_check reads tensor (or array) inputs, from a batch or from a loader yielding (inputs, targets).",
            seconds=time.perf_counter() - t0,
        )


def _read(loader: Iterable[Any], batches: int) -> list[tuple[Any, Any]]:
    """The first ``batches`` batches, read with every global RNG state put back afterwards."""
    np = sys.modules.get("numpy")
    py_state = random.getstate()
    np_state = np.random.get_state() if np is not None else None
    out = []
    try:
        with torch.random.fork_rng(devices=[]):
            try:
                for batch in itertools.islice(iter(loader), batches):
                    out.append(_split(batch))
            except _Unreadable:
                raise
            except Exception as exc:  # the user's loader: report, never raise
                raise _Unreadable(
                    f"the loader raised {type(exc).__name__} on batch {len(out)}: {exc}"
                ) from exc
    finally:
        random.setstate(py_state)
        if np is not None and np_state is not None:
            np.random.set_state(np_state)
    if not out:
        raise _Unreadable("the loader yielded no batches")
    return out


class _Findings(list[_Finding]):
    """The findings so far."""

    def flag(self, verdict: str, title: str, advice: str) -> None:
        self.append(_Finding(verdict, title, advice))


def _run(
    inputs: Any, targets: Any, loader: Any, batches: int, val: Any, num_classes: int | None, t0: float
) -> CheckResult:
    read = _read(loader, batches) if loader is not None else [(inputs, targets)]
    found = _Findings()
    stats, seen = _Stats(), set()
    samples = duplicates = bad_sizes = target_nonfinite = 0
    labels: list[torch.Tensor] = []
    regression: list[torch.Tensor] = []
    image_like = ids = pixels = False
    for i, (x, y) in enumerate(read):
        x = _tensor(x, f"batch {i}'s inputs")
        n = x.shape[0] if x.dim() else 1
        image_like = x.dim() >= 3
        ids = x.dim() <= 2 and x.dtype not in (torch.uint8, torch.bool) and not x.is_floating_point()
        pixels = image_like or x.dtype == torch.uint8 or (x.dim() == 2 and x.shape[1] >= 64)  # flattened
        if x.numel() == 0:
            continue
        samples += n
        stats.add(x)
        for h in _hashes(x):
            duplicates += h in seen
            seen.add(h)
        if y is not None:
            y = _tensor(y, f"batch {i}'s targets")
            bad_sizes += (y.shape[0] if y.dim() else 1) != n
            target_nonfinite += int((~torch.isfinite(y)).sum()) if y.is_floating_point() else 0
            lab = _labels(y, n)
            if lab is not None:
                labels.append(lab)
            elif y.is_floating_point():
                regression.append(y.detach().reshape(-1).double())
    if stats.n is None:
        raise _Unreadable("no samples")
    numbers: dict[str, Any] = {"samples": samples, "batches": len(read), "train_duplicates": duplicates}
    unit = "channel" if image_like else "feature"
    table = _check_inputs(stats, unit, ids, pixels, numbers, found)
    if bad_sizes:
        found.flag(
            FAIL,
            f"{bad_sizes} of {len(read)} batches have a different number of inputs and targets",
            "inputs and targets must pair up sample by sample: check the dataset's __getitem__ and collate_fn",
        )
    if target_nonfinite:
        found.flag(
            FAIL, f"{target_nonfinite} NaN/Inf values in the targets", "fix or drop those samples' targets"
        )
    if regression:
        r = torch.cat(regression)
        r = r[torch.isfinite(r)]
        if r.numel():
            numbers["target_mean"], numbers["target_std"] = float(r.mean()), float(r.std(correction=0))
    if labels:
        table += _check_labels(torch.cat(labels), len(read) > 1, num_classes, numbers, found)
    if val is not None:
        vx = _tensor(val[0] if isinstance(val, (tuple, list)) else val, "val's inputs")
        overlap = sum(h in seen for h in _hashes(vx))
        numbers["val_samples"], numbers["val_overlap"] = vx.shape[0] if vx.dim() else 1, overlap
        if overlap:
            found.flag(
                FAIL,
                f"{overlap} validation samples also appear in training: leakage",
                f"{overlap} of {numbers['val_samples']} validation samples are identical to one of the {samples} "
                "training samples read, so validation scores overstate generalization: deduplicate before "
                "splitting, and split by source (patient, user, video...) rather than by row",
            )
    numbers["fails"] = fails = sum(f.verdict == FAIL for f in found)
    numbers["warns"] = warns = sum(f.verdict == WARN for f in found)
    found.sort(key=lambda f: f.verdict != FAIL)
    if found:
        summary = found[0].title
        explanation = " ".join(f"{i}. {f.title}: {f.advice}." for i, f in enumerate(found, 1))
    else:
        summary = f"{samples} samples, {_count(numbers['channels'], unit)}: mean {numbers['mean']:.3g}, std "
        summary += f"{numbers['std']:.3g}, no findings"
        explanation = "The inputs look normalized and finite"
        explanation += ", the labels are in range and reasonably balanced" if labels else ""
        explanation += ", and no validation sample appears in training." if val is not None else "."
    verdict = FAIL if fails else WARN if warns else PASS
    return CheckResult(NAME, verdict, summary, explanation, numbers, table, time.perf_counter() - t0)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _check_inputs(
    stats: _Stats, unit: str, ids: bool, pixels: bool, numbers: dict[str, Any], found: _Findings
) -> list[dict[str, Any]]:
    """Totals into ``numbers``, findings for NaN/Inf and scale (not for integer ids), a row per channel.

    ``pixels``: the layout could hold images (N×C×..., uint8, or a wide N×F table such as flattened digits).
    """
    assert stats.n is not None
    std = (stats.m2 / stats.n.clamp(min=1)).sqrt()
    n_all = stats.n.sum().clamp(min=1)
    mean = (stats.n * stats.mean).sum() / n_all
    pooled = ((stats.m2 + stats.n * (stats.mean - mean) ** 2).sum() / n_all).sqrt()
    absmax = torch.where(stats.n > 0, torch.maximum(stats.max.abs(), stats.min.abs()), torch.zeros_like(std))
    channels, lo, hi = int(stats.n.shape[0]), float(stats.min.min()), float(stats.max.max())
    nan, inf = int(stats.nan.sum()), int(stats.inf.sum())
    numbers |= {"channels": channels, "mean": float(mean), "std": float(pooled), "min": lo, "max": hi}
    numbers |= {"nan": nan, "inf": inf}
    if nan or inf:
        c = int(torch.nonzero(stats.nan + stats.inf)[0])
        found.flag(
            FAIL,
            f"{' and '.join(_count(k, w) for k, w in ((nan, 'NaN'), (inf, 'Inf')) if k)} in the inputs "
            f"(first in {unit} {c})",
            "one NaN input makes the loss NaN and, after one step, every weight: find where the data produces it "
            "(missing values, log of 0, division by a zero std) and fill or drop those samples",
        )
    if not ids:  # integer ids (1-D or 2-D integer inputs) are looked up, not scaled
        worst = int(absmax.argmax())
        where = f" in {unit} {worst}" if channels > 1 else ""
        if float(absmax[worst]) >= PIXEL_MAX:
            pixels = pixels and lo >= 0 and hi <= 255.5
            found.flag(
                FAIL,
                f"inputs range {lo:.4g} to {hi:.4g}: raw 0–255 pixel values"
                if pixels
                else f"inputs range {float(stats.min[worst]):.4g} to {float(stats.max[worst]):.4g}{where}: "
                "not normalized",
                "divide by 255 and normalize (x - mean) / std per channel with the training set's mean and std "
                "(torchvision: ToTensor() then Normalize(mean, std))"
                if pixels
                else "standardize each feature, (x - mean) / std with the training set's statistics: inputs "
                "this large saturate activations and make the first layer's gradients dominate",
            )
        bad = (stats.mean.abs() > MEAN_LIMIT) | (std > STD_LIMIT) | (absmax > ABS_LIMIT)
        if bool(bad.any()) and float(absmax[worst]) < PIXEL_MAX:
            c = int(torch.nonzero(bad)[0])
            found.flag(
                WARN,
                f"{int(bad.sum())} of {_count(channels, unit)} look unnormalized ({unit} {c}: mean "
                f"{float(stats.mean[c]):.3g}, std {float(std[c]):.3g}, max |x| {float(absmax[c]):.3g})",
                f"networks train best on inputs with mean ~0 and std ~1 (flagged: |mean| > {MEAN_LIMIT:g}, "
                f"std > {STD_LIMIT:g} or |x| > {ABS_LIMIT:g}): standardize with the training set's statistics",
            )
        elif 0 < float(absmax[worst]) < TINY_LIMIT:
            found.flag(
                WARN,
                f"every input is tiny (max |x| = {float(absmax[worst]):.3g})",
                "the inputs look scaled down twice (e.g. divided by 255 in the dataset and again in a "
                "transform): the first layer sees almost nothing; normalize once",
            )
        varying = std[(std > 1e-12) & (stats.n > 1)]
        if varying.numel() >= 2:
            numbers["std_ratio"] = ratio = float(varying.max() / varying.min())
            if ratio > SPREAD_LIMIT:
                found.flag(
                    WARN,
                    f"{unit} stds span a factor of {ratio:.3g} ({float(varying.min()):.3g} to "
                    f"{float(varying.max()):.3g})",
                    "standardize features: features on very different scales make the loss surface badly "
                    "conditioned, so one learning rate is too large for some weights and too small for others",
                )
        numbers["constant_channels"] = int(((std <= 1e-12) & (stats.n > 0)).sum())
    return [
        {unit: c, "mean": float(stats.mean[c]), "std": float(std[c]), "min": float(stats.min[c])}
        | {"max": float(stats.max[c]), "nonfinite": int(stats.nan[c] + stats.inf[c])}
        for c in range(min(channels, MAX_ROWS))
    ]


def _check_labels(
    labels: torch.Tensor, several: bool, num_classes: int | None, numbers: dict[str, Any], found: _Findings
) -> list[dict[str, Any]]:
    """Label range, coverage, a single class and imbalance; returns a row per class (the first few)."""
    negative = int((labels < 0).sum())  # e.g. CrossEntropyLoss's ignore_index=-100: not a class
    labels = labels[labels >= 0]
    numbers["labels"], numbers["ignored_labels"] = int(labels.numel()), negative
    if not labels.numel():
        return []
    values, counts = torch.unique(labels, return_counts=True)  # sorted; unlike bincount, fine for huge ids
    total, top = int(counts.sum()), int(values[-1])
    numbers["classes_seen"], numbers["majority_fraction"] = len(values), int(counts.max()) / total
    if num_classes is not None and top >= num_classes:
        found.flag(
            FAIL,
            f"{int((labels >= num_classes).sum())} labels are >= num_classes={num_classes} (largest {top})",
            "CrossEntropyLoss raises on them (on GPU as an obscure device-side assert): labels must run from 0 to "
            "num_classes - 1; check the label encoding (1-based labels?) or the model's output size",
        )
    if len(values) == 1 and total >= 2:
        found.flag(
            FAIL if several else WARN,
            f"every one of the {total} labels is class {top}",
            "the model can only learn to predict that class: "
            + (
                "the loader is probably not shuffled (DataLoader(..., shuffle=True)) or the labels are broken"
                if several
                else "check the labels, and that batches are drawn shuffled"
            ),
        )
    if num_classes is not None:
        inside = values[values < num_classes].tolist()
        first = next((k for k, v in enumerate(inside) if k != v), len(inside))  # the smallest class not seen
        numbers["num_classes"], numbers["missing_classes"] = num_classes, num_classes - len(inside)
        if len(values) > 1 and len(inside) < num_classes and total >= LABELS_PER_CLASS * num_classes:
            found.flag(
                WARN,
                f"{num_classes - len(inside)} of {num_classes} classes never appear in {total} labels "
                f"(e.g. class {first})",
                "with this many labels every class should show up: check the label mapping, the loader's "
                "sampling and whether num_classes is right",
            )
    if len(values) >= 2 and total >= 2 * LABELS_PER_CLASS * len(values):
        numbers["imbalance"] = ratio = int(counts.max()) / int(counts.min())
        if ratio > IMBALANCE_LIMIT:
            big, small = int(values[counts.argmax()]), int(values[counts.argmin()])
            found.flag(
                WARN,
                f"classes are imbalanced {ratio:.3g}:1 (class {big}: {int(counts.max())}, class {small}: "
                f"{int(counts.min())})",
                f"predicting class {big} alone scores {numbers['majority_fraction']:.0%} accuracy: weight the "
                "loss (CrossEntropyLoss(weight=...)) or resample (WeightedRandomSampler), and judge by per-class "
                "recall or balanced accuracy",
            )
    count = dict(zip(values.tolist(), counts.tolist(), strict=True))
    rows = range(min(max(top + 1, num_classes or 0), MAX_ROWS))
    return [{"class": k, "count": count.get(k, 0), "fraction": count.get(k, 0) / total} for k in rows]
