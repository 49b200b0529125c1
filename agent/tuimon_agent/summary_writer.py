"""A drop-in for ``torch.utils.tensorboard.SummaryWriter`` that streams to tuimon instead of event files.

Code written for TensorBoard runs unchanged with one import swapped::

    from tuimon_agent import SummaryWriter      # was: from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter("runs/exp1")         # the run is called "exp1"
    writer.add_scalar("loss/train", loss, step)
    writer.close()

Where things go:

- ``add_scalar``: a ``metrics`` record at ``global_step`` under the tag; an evaluation tag (``val/...``,
  ``eval/...``, ``valid/...``, ``test/...``, the ``val_`` family of prefixes, or a last component ``val``, ``test``
  ... as in ``Loss/test``) goes to an ``eval`` record instead.
- ``add_scalars(main, {k: v})``: one record with ``main/k`` names, except that ``train``, ``val``, ``valid``,
  ``eval`` and ``test`` keys become prefixes (``add_scalars("loss", {"train": a, "val": b})`` gives
  ``train/loss`` and ``val/loss``, which the viewer pairs on one chart).
- ``add_histogram``: the ``histograms`` record the viewer's histogram view shows, one per step with every tag
  written at that step as a row (the ``layers`` record names the tags; the values go in the ``weight`` histograms,
  the ``grad`` ones are empty). Binned here with ``numpy.histogram`` into equal bins; TensorBoard's exponential
  ``bins="tensorflow"`` and numpy's bin rules are replaced by the writer's bin count (``hist_bins``). Not recorded
  when the writer also watches a model (``model=``): the monitor then bins every parameter itself, and the
  histogram view follows the model's parameters.
- ``add_hparams``: an ``event`` record with ``what = "hparams"`` and the ``hparams`` and ``metrics`` dicts.
- Everything else TensorBoard offers (``add_image``, ``add_graph``, ``add_text``, ...) is accepted and ignored,
  with one warning per method.

Like :class:`~tuimon_agent.Monitor`, it never raises into the training loop: a value it cannot record is skipped
with one warning.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .monitor import Monitor, _warn, watch

__all__ = ["SummaryWriter"]

_SPLITS = ("train", "val", "valid", "eval", "test")
_EVAL_PREFIXES = ("val_", "eval_", "valid_", "validation_", "test_")
_EVAL_DIRS = ("val", "eval", "valid", "validation", "test")


def is_eval_tag(tag: str) -> bool:
    """Whether a scalar tag names an evaluation metric: a ``val/``, ``eval/``, ``valid/``, ``validation/``,
    ``test/`` first component or a ``val_``-like prefix, or such a last component (``Loss/test``)."""
    if tag.startswith(_EVAL_PREFIXES):
        return True
    parts = tag.split("/")
    return len(parts) > 1 and (parts[0] in _EVAL_DIRS or parts[-1] in _EVAL_DIRS)


class SummaryWriter:
    """Writes TensorBoard-style scalars, histograms and hyperparameters to a tuimon run, without slowing down
    training (every call only enqueues; histograms are binned on the calling thread with numpy).

    Args:
        log_dir: TensorBoard's run directory; its last component names the run (no event files are written).
            Default: ``runs/<date>_<host><comment>`` as TensorBoard makes it, the run named after the script.
        comment: Appended to the run's name (as TensorBoard appends it to the default ``log_dir``).
        purge_step: Accepted for compatibility; ignored.
        max_queue: Accepted for compatibility; ignored (the monitor's queue never blocks).
        flush_secs: Accepted for compatibility; ignored (the run file is committed every ``commit_interval``).
        filename_suffix: Accepted for compatibility; ignored.
        model: A ``torch.nn.Module`` to watch too (per-parameter statistics, histograms, activations).
        optimizer: Its optimizer (learning rates every step; statistics and live commands need it).
        hist_bins: Bins of the histograms :meth:`add_histogram` records (1 to 4096; default 32); also passed
            to :func:`~tuimon_agent.watch`.
        **options: Other keyword options of :func:`tuimon_agent.watch` (``run=`` overrides the name, ``dir=``,
            ``stats_every=``, ...).

    Attributes:
        monitor: The underlying :class:`~tuimon_agent.Monitor`.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str] | None = None,
        comment: str = "",
        purge_step: int | None = None,
        max_queue: int = 10,
        flush_secs: int = 120,
        filename_suffix: str = "",
        *,
        model: Any = None,
        optimizer: Any = None,
        hist_bins: int = 32,
        **options: Any,
    ) -> None:
        if isinstance(hist_bins, bool) or not isinstance(hist_bins, int) or not 1 <= hist_bins <= 4096:
            raise ValueError(f"invalid hist_bins={hist_bins!r}: must be an int from 1 to 4096")
        if log_dir is None:
            import socket
            from datetime import datetime

            stamp = datetime.now().strftime("%b%d_%H-%M-%S")
            self.log_dir = os.path.join("runs", f"{stamp}_{socket.gethostname()}{comment}")
            name = None
        else:
            self.log_dir = os.fspath(log_dir)
            name = (os.path.basename(os.path.normpath(self.log_dir)) or None) if self.log_dir else None
            name = f"{name}{comment}" if name else None
        if name is None and comment:
            from .monitor import _default_name

            name = f"{_default_name()}{comment}"
        if name is not None:
            options.setdefault("run", name)
        self._bins = hist_bins
        self._warned: set[str] = set()
        self._hist_step: int | None = None
        self._hist_rows: dict[str, tuple[list[int], np.ndarray, float, float, int, int]] = {}
        self._hist_names: list[str] = []
        self._hist_shapes: dict[str, list[int]] = {}
        self._hist_published: tuple[str, ...] = ()
        self._owns_histograms = model is None
        self._closed = False
        self.monitor: Monitor = watch(model, optimizer, hist_bins=hist_bins, **options)

    # -- TensorBoard's API -------------------------------------------------------------------------------------

    def get_logdir(self) -> str:
        """The ``log_dir`` as TensorBoard would use it."""
        return self.log_dir

    def add_scalar(
        self,
        tag: str,
        scalar_value: Any,
        global_step: int | None = None,
        walltime: float | None = None,
        new_style: bool = False,
        double_precision: bool = False,
    ) -> None:
        """Record one scalar at a step (an evaluation tag as ``eval``; see the module docstring).

        Args:
            tag: The metric's name.
            scalar_value: A number, a numpy scalar or a one-element tensor (read on the agent thread).
            global_step: The step (default: the latest step recorded).
            walltime: Ignored (the record's time is the call's).
            new_style: Ignored.
            double_precision: Ignored (values are recorded as float64).
        """
        self._scalars({str(tag): scalar_value}, global_step)

    def add_scalars(
        self,
        main_tag: str,
        tag_scalar_dict: Mapping[str, Any],
        global_step: int | None = None,
        walltime: float | None = None,
    ) -> None:
        """Record several scalars at a step: ``main_tag/key`` each, or ``key/main_tag`` for the keys ``train``,
        ``val``, ``valid``, ``eval`` and ``test``, so that a train/validation pair shows as one.

        Args:
            main_tag: The common name.
            tag_scalar_dict: Sub-names to values.
            global_step: The step (default: the latest step recorded).
            walltime: Ignored.
        """
        try:
            values = {
                (f"{k}/{main_tag}" if k in _SPLITS else f"{main_tag}/{k}"): v
                for k, v in tag_scalar_dict.items()
            }
        except Exception as exc:
            self._warn_once("add_scalars", f"add_scalars({main_tag!r}, ...) not recorded ({exc})")
            return
        self._scalars(values, global_step)

    def add_histogram(
        self,
        tag: str,
        values: Any,
        global_step: int | None = None,
        bins: Any = "tensorflow",
        walltime: float | None = None,
        max_bins: int | None = None,
    ) -> None:
        """Record the histogram of a tensor's or an array's values at a step (see the module docstring).

        Args:
            tag: The histogram's name (a row of the viewer's histogram view).
            values: A tensor, an array or a sequence of numbers.
            global_step: The step (default: the latest step recorded).
            bins: Ignored unless an int, which must then equal the writer's ``hist_bins`` (one bin count per
                run); otherwise the writer's.
            walltime: Ignored.
            max_bins: Ignored.
        """
        if self._closed or not self.monitor.enabled:
            return
        if not self._owns_histograms:
            self._warn_once(
                "add_histogram",
                "add_histogram is not recorded when the SummaryWriter watches a model: the monitor records the "
                "model's weight and gradient histograms itself every hist_every steps",
            )
            return
        try:
            if isinstance(bins, int) and not isinstance(bins, bool) and bins != self._bins:
                self._warn_once(
                    "bins",
                    f"add_histogram(bins={bins!r}): histograms use the writer's hist_bins={self._bins}",
                )
            step = self._step(global_step)
            if self._hist_step is not None and step != self._hist_step:
                self._flush_histograms()
            self._hist_step = step
            arr = _array(values)
            tag = str(tag)
            if tag not in self._hist_shapes:
                self._hist_names.append(tag)
            self._hist_shapes[tag] = list(arr.shape)
            self._hist_rows[tag] = _histogram(arr.reshape(-1), self._bins)
        except Exception as exc:
            self._warn_once(
                "add_histogram", f"add_histogram({tag!r}, ...) not recorded ({type(exc).__name__}: {exc})"
            )

    def add_hparams(
        self,
        hparam_dict: Mapping[str, Any],
        metric_dict: Mapping[str, Any],
        hparam_domain_discrete: Mapping[str, list[Any]] | None = None,
        run_name: str | None = None,
        global_step: int | None = None,
    ) -> None:
        """Record the run's hyperparameters and their metrics as an ``event`` record (``what = "hparams"``).

        Args:
            hparam_dict: Hyperparameter names to values (numbers, strings, bools; others are recorded as text).
            metric_dict: Metric names to values.
            hparam_domain_discrete: Ignored.
            run_name: Recorded with them, when given.
            global_step: The step (default: the latest step recorded).
        """
        if self._closed or not self.monitor.enabled:
            return
        try:
            hp = {str(k): _plain(v) for k, v in hparam_dict.items()}
            metrics = {str(k): _plain(v) for k, v in metric_dict.items()}
            shown = ", ".join(f"{k}={v}" for k, v in list(hp.items())[:8])
            payload: dict[str, Any] = {
                "what": "hparams",
                "message": f"hyperparameters: {shown}" + (" ..." if len(hp) > 8 else ""),
                "hparams": hp,
                "metrics": metrics,
            }
            if run_name is not None:
                payload["run_name"] = str(run_name)
            self.monitor._enqueue_stats("event", self._step(global_step), payload)
        except Exception as exc:
            self._warn_once("add_hparams", f"add_hparams not recorded ({type(exc).__name__}: {exc})")

    def flush(self) -> None:
        """Hand the histograms of the current step to the monitor (scalars are handed over as they come; a step's
        histograms also go when the next step's first scalar or histogram arrives)."""
        if self._closed:
            return
        try:
            self._flush_histograms()
        except Exception as exc:
            self._warn_once("flush", f"histograms not recorded ({type(exc).__name__}: {exc})")

    def close(self) -> None:
        """Flush and close the run (the ``end`` record, the run file committed). Safe to call twice."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        self.monitor.close()

    def __enter__(self) -> SummaryWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is not None and not self._closed:
            self.flush()
            self._closed = True
            self.monitor.__exit__(exc_type, exc, tb)
        else:
            self.close()

    def __getattr__(self, name: str) -> Any:
        # Any other add_* method of TensorBoard's writer: accepted and ignored, with one warning.
        if name.startswith("add_"):
            return self._ignored(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"<SummaryWriter log_dir={self.log_dir!r} {self.monitor!r}>"

    # -- internals ---------------------------------------------------------------------------------------------

    def _ignored(self, name: str) -> Any:
        def ignored(*args: Any, **kwargs: Any) -> None:
            self._warn_once(name, f"SummaryWriter.{name} is not supported by tuimon; ignored")

        ignored.__name__ = name
        return ignored

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _warn(message)

    def _step(self, global_step: Any) -> int:
        if global_step is None:
            return self.monitor.step
        return int(global_step)

    def _scalars(self, values: dict[str, Any], global_step: Any) -> None:
        if self._closed or not self.monitor.enabled:
            return
        try:
            step = self._step(global_step)
            if self._hist_step is not None and step != self._hist_step:
                self._flush_histograms()  # a later step began: the viewer gets the histograms now
            train = {k: v for k, v in values.items() if not is_eval_tag(k)}
            evals = {k: v for k, v in values.items() if is_eval_tag(k)}
            if train:
                self.monitor.log(train, step=step)
            if evals:
                self.monitor.log_eval(evals, step=step)
        except Exception as exc:
            self._warn_once("add_scalar", f"scalars not recorded ({type(exc).__name__}: {exc})")

    def _flush_histograms(self) -> None:
        """Queue the pending step's histograms: a ``layers`` record when the set of tags grew, then one
        ``histograms`` record with a row per tag (tags not written at this step: empty rows)."""
        rows, step = self._hist_rows, self._hist_step
        if not rows or step is None:
            return
        self._hist_rows = {}
        names = tuple(self._hist_names)
        mon = self.monitor
        if names != self._hist_published:
            self._hist_published = names
            params = []
            for n in names:
                shape = self._hist_shapes[n]
                module, _, _ = n.rpartition("/")
                params.append(
                    {
                        "name": n,
                        "shape": shape,
                        "numel": int(np.prod(shape)) if shape else 1,
                        "module": module or n,
                        "module_type": "histogram",
                    }
                )
            mon._enqueue_stats("layers", step, {"params": params})
        b, p = self._bins, len(names)
        counts = np.zeros((2, p, b + 2), dtype=np.int64)
        ranges = np.full((2, p, 2), np.nan, dtype=np.float32)
        for j, n in enumerate(names):
            row = rows.get(n)
            if row is None:
                continue
            c, lo, hi, nan, inf = row
            counts[0, j, :b] = c
            counts[0, j, b] = nan
            counts[0, j, b + 1] = inf
            ranges[0, j] = (lo, hi)
        mon._enqueue_stats("hist", step, ([_Host(counts), _Host(ranges)], None))


class _Host:
    """A host array in the shape the monitor's histogram path reads (``.numpy()``, as a CPU tensor has)."""

    __slots__ = ("_a",)

    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    def numpy(self) -> np.ndarray:
        return self._a


def _array(values: Any) -> np.ndarray:
    """Any tensor, array or sequence of numbers as a float64 numpy array (a tensor is copied to the host)."""
    detach = getattr(values, "detach", None)
    if callable(detach):
        t = detach()
        if t.is_floating_point() or t.is_complex():
            t = t.float() if not t.is_complex() else t.real.float()
        return t.cpu().numpy().astype(np.float64, copy=False)
    return np.asarray(values, dtype=np.float64)


def _histogram(x: np.ndarray, bins: int) -> tuple[np.ndarray, float, float, int, int]:
    """``(counts, lo, hi, nan, inf)`` of flat values, as the ``histograms`` record defines them (``numpy.histogram``
    of the finite values over their range, in float64; NaN and ±Inf counted apart)."""
    finite = np.isfinite(x)
    nan = int(np.isnan(x).sum())
    inf = int(x.size - int(finite.sum()) - nan)
    f = x[finite]
    if f.size == 0:
        return np.zeros(bins, dtype=np.int64), math.nan, math.nan, nan, inf
    lo, hi = float(f.min()), float(f.max())
    if lo == hi:  # the protocol's rule (numpy's widened range puts the value in bin B // 2 or next to it)
        counts = np.zeros(bins, dtype=np.int64)
        counts[bins // 2] = f.size
        return counts, lo, hi, nan, inf
    counts, _ = np.histogram(f, bins=bins, range=(lo, hi))
    return counts.astype(np.int64), lo, hi, nan, inf


def _plain(v: Any) -> Any:
    """A hyperparameter or metric value as a msgpack-able plain value (tensors and numpy scalars as floats)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    try:
        return float(v)
    except Exception:
        return str(v)
