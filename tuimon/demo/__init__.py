"""The demo shipped with tuimon: ``python -m tuimon.demo.digits`` (or ``tuimon demo``), a CNN on scikit-learn's digits.

It needs the ``demo`` extra (torch and scikit-learn): ``pip install 'tuimon[demo]'``. This package's ``__init__``
imports neither, so that ``tuimon demo`` can say what is missing in one line instead of a traceback.
"""

from __future__ import annotations

import importlib.util

REQUIREMENTS = {"torch": "torch", "sklearn": "scikit-learn"}
"""Module the demo imports → the distribution that provides it."""


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules holds None (an import blocked on purpose)
        return False


def missing_requirements() -> str | None:
    """The one-line reason the demo cannot run in this environment, or ``None`` when it can.

    Looks for torch and scikit-learn without importing them.
    """
    missing = [dist for module, dist in REQUIREMENTS.items() if not _importable(module)]
    if not missing:
        return None
    return f"the demo needs {' and '.join(missing)}, which this Python lacks: pip install 'tuimon[demo]'"
