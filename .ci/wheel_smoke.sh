#!/usr/bin/env bash
# The install users get: build both wheels from a clean copy of the working tree, install them into a fresh venv
# (torch first, then the wheels with the `demo` extra) and smoke-test that install from a directory outside the
# checkout, with PYTHONPATH unset, so that nothing is imported from the sources.
#
#   .ci/wheel_smoke.sh            (PYTHON=... picks the interpreter; TUIMON_SMOKE_TORCH=... the torch requirement)
#
# Prints one PASS/FAIL line per check and exits 1 if any failed. Measured on the 2-core machine shared with other
# jobs (load average 5): 200 s, 90 of them installing (installs skip byte-compiling, which doubled that), then about
# a minute removing the venv; expect less on an idle machine.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
# A plain `torch` resolves to a multi-GB CUDA build; 2.13.0 is the CPU build the project is tested with.
torch_req=${TUIMON_SMOKE_TORCH:-torch==2.13.0}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tuimon-wheel-smoke.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
failed=0
t0=$SECONDS

die() {
  echo "FAIL: $1"
  [ -n "${2:-}" ] && tail -n 30 "$2" | sed 's/^/    /'
  echo "wheel smoke test: FAILED (setting up)"
  exit 1
}

# check NAME COMMAND...: runs COMMAND in the work directory; PASS or FAIL with the output's tail.
check() {
  local name=$1 t=$SECONDS
  shift
  if (cd "$work" && "$@") >"$tmp/out" 2>&1; then
    echo "PASS: $name ($((SECONDS - t)) s)"
  else
    echo "FAIL: $name (exit $?, $((SECONDS - t)) s)"
    tail -n 30 "$tmp/out" | sed 's/^/    /'
    failed=1
  fi
}

# 1. A clean copy of the working tree (tracked and untracked files, not ignored ones): a stale build/ or
#    *.egg-info in the checkout could otherwise ship files that the sources no longer have.
mkdir -p "$tmp/src" "$tmp/wheels" "$tmp/work"
git -C "$repo" ls-files -z --cached --others --exclude-standard >"$tmp/files" 2>"$tmp/log" ||
  die "list the checkout's files (git)" "$tmp/log"
(cd "$repo" && while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done <"$tmp/files" |
  tar --null -T - -cf -) | tar -xf - -C "$tmp/src" || die "copy the checkout"

# 2. Both wheels, built the way pip builds them for users (isolated build environments).
"$python" -m pip wheel -q --no-deps "$tmp/src/agent" "$tmp/src" -w "$tmp/wheels" >"$tmp/log" 2>&1 ||
  die "build the wheels" "$tmp/log"
agent_whl=$(ls "$tmp"/wheels/tuimon_agent-*.whl 2>/dev/null)
viewer_whl=$(ls "$tmp"/wheels/tuimon-*.whl 2>/dev/null)
[ -n "$agent_whl" ] && [ -n "$viewer_whl" ] || die "build the wheels: got $(ls "$tmp/wheels")"
echo "PASS: built $(basename "$agent_whl") and $(basename "$viewer_whl")"

# 3. A fresh venv: torch first, then the two wheels with the demo extra.
"$python" -m venv "$tmp/venv" >"$tmp/log" 2>&1 || die "make a fresh venv" "$tmp/log"
venv_py=$tmp/venv/bin/python
"$venv_py" -m pip install -q --no-compile "$torch_req" >"$tmp/log" 2>&1 || die "install $torch_req" "$tmp/log"
"$venv_py" -m pip install -q --no-compile "$agent_whl" "$viewer_whl[demo]" >"$tmp/log" 2>&1 ||
  die "install the wheels with the demo extra" "$tmp/log"
echo "PASS: installed both wheels and $torch_req into a fresh venv ($((SECONDS - t0)) s so far)"

# 4. The checks, from outside the checkout, with the venv's console script and interpreter only.
unset PYTHONPATH
export PATH="$tmp/venv/bin:$PATH" TUIMON_DIR="$tmp/work/tuimon-runs"
work=$tmp/work
cp "$repo/.ci/smoke_train.py" "$work/"
tuimon=$tmp/venv/bin/tuimon

check "console script: tuimon --help" "$tuimon" --help
check "tuimon --version names both distributions" bash -c \
  "out=\$('$tuimon' --version) && echo \"\$out\" && grep -q '^tuimon [0-9]' <<<\"\$out\" && grep -q '^tuimon-agent [0-9]' <<<\"\$out\""
check "import tuimon_agent.alerts, tuimon_agent.checks" "$venv_py" -c "import tuimon_agent.alerts, tuimon_agent.checks"
check "the agent's and the viewer's py.typed are installed" "$venv_py" -c "
import importlib.resources as r
assert r.files('tuimon_agent').joinpath('py.typed').is_file() and r.files('tuimon').joinpath('py.typed').is_file()
assert r.files('tuimon').joinpath('app.tcss').is_file()
import tuimon.screens.overview, tuimon.widgets.metric_chart"
check "20-step watch(): param_stats records and a nonfinite alert in the run file" \
  bash -o pipefail -c "'$venv_py' smoke_train.py runs | tee train.out"
run_file=$(tail -n 1 "$work/train.out" 2>/dev/null)
check "tuimon diagnose on that run file finds the NaN" bash -o pipefail -c \
  "'$tuimon' diagnose '$run_file' | tee diag.out; grep -q nonfinite diag.out"
check "the demo from the wheel: python -m tuimon.demo.digits --help" "$venv_py" -m tuimon.demo.digits --help
check "a short headless demo run (its sanity checks too) writes a run file" bash -c \
  "'$venv_py' -m tuimon.demo.digits --steps 40 --pace 0 --eval-every 20 --dir demo-runs --run demo-smoke &&
   '$tuimon' tail demo-runs/*/run.sqlite --no-follow -n 3"

if [ "$failed" = 0 ]; then
  echo "wheel smoke test: PASSED in $((SECONDS - t0)) s"
else
  echo "wheel smoke test: FAILED"
fi
exit "$failed"
