"""Sanity checks from the debugging playbook, run before (or beside) training.

Each check takes the model and a batch, works on a copy (the model, its gradients and the global RNG state are left
as they were) and returns a :class:`CheckResult` with a verdict (pass / warn / fail / error), the numbers behind it
and an explanation of what to do. ``Monitor.sanity_check`` runs the quick ones and sends the results to the viewer
and the run file; ``tuimon_agent.testing`` turns them into pytest assertions; ``tuimon check`` runs them from the
command line. This subpackage imports torch; ``import tuimon_agent`` does not import it.
"""

from ._result import ERROR, FAIL, PASS, VERDICTS, WARN, CheckResult

__all__ = ["CheckResult", "PASS", "WARN", "FAIL", "ERROR", "VERDICTS"]
