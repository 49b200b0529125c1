#!/usr/bin/env bash
# Sets up ./.venv once (again when a pyproject.toml changes), then runs one of:
#   ./dev.sh demo [tuimon demo options]   train the demo CNN and open the TUI on it
#   ./dev.sh test [pytest options]        lint, import contract, the wheel smoke test (only without pytest
#                                         options) and the test suite
#   ./dev.sh smoke                        the wheel smoke test alone (.ci/wheel_smoke.sh: both wheels in a fresh venv)
#   ./dev.sh bench                        the benchmarks (tables on stdout)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.tuimon-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ agent/pyproject.toml -nt "$stamp" ]; then
  # Users bring their own torch; where none is installed, take 2.13.0 (a plain `torch` resolves to a
  # multi-GB CUDA build).
  python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
  python -m pip install -q -e ./agent -e ".[dev]"
  touch "$stamp"
fi
cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  demo) exec tuimon demo "$@" ;;
  test)
    ruff check .
    lint-imports
    # The install users get, before the suite: with pytest options (a few files, -k ...) it is skipped.
    [ $# -eq 0 ] && PYTHON=python .ci/wheel_smoke.sh
    exec python -m pytest -q "$@"
    ;;
  smoke) exec env PYTHON=python .ci/wheel_smoke.sh ;;
  bench)
    python tests/benchmarks/bench_log.py
    python tests/benchmarks/bench_ingest.py
    python tests/benchmarks/bench_viewer.py
    python tests/benchmarks/bench_checks.py
    python tests/benchmarks/bench_instruments.py
    python tests/benchmarks/bench_probe.py
    python tests/benchmarks/bench_alerts.py
    python tests/benchmarks/bench_loop_shapes.py
    python tests/benchmarks/bench_integrations.py
    ;;
  *) echo "usage: ./dev.sh demo|test|smoke|bench [options]" >&2; exit 2 ;;
esac
