"""Sanity checks from the debugging playbook, run before (or beside) training.

Each check takes the model and a batch and leaves the model, its gradients, its buffers, its train/eval mode and
the global RNG state as they were (training checks work on a copy; the tracing ones restore what they touch) and returns a :class:`CheckResult` with a verdict (pass / warn / fail / error), the numbers behind it
and an explanation of what to do. ``Monitor.sanity_check`` runs the quick ones and sends the results to the viewer
and the run file; ``tuimon_agent.testing`` turns them into pytest assertions; ``tuimon check`` runs them from the
command line. This subpackage imports torch; ``import tuimon_agent`` does not import it.
"""

from ._result import ERROR, FAIL, PASS, VERDICTS, WARN, CheckResult
from .data import data_check
from .gradients import gradient_check
from .loss import initial_loss
from .shapes import shape_trace
from .suite import ALL_CHECKS, run_checks
from .training import loss_decreases, overfit_one_batch

__all__ = [
    "ALL_CHECKS",
    "CheckResult",
    "ERROR",
    "FAIL",
    "PASS",
    "VERDICTS",
    "WARN",
    "data_check",
    "gradient_check",
    "initial_loss",
    "loss_decreases",
    "overfit_one_batch",
    "run_checks",
    "shape_trace",
]
