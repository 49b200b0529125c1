"""Packaging: what the wheels hold, ``tuimon --version``, and the demo's one-line message when its extra is missing.

The full install (both wheels in a fresh venv, used from outside the checkout) is ``.ci/wheel_smoke.sh``, which
``./dev.sh test`` runs before the suite; these tests check the same promises in a few seconds each.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import tuimon
import tuimon_agent

REPO = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")


def _packages(root: Path, top: str) -> set[str]:
    """Every package (a directory with ``__init__.py``) under ``root/top``, as dotted names."""
    return {
        ".".join(p.parent.relative_to(root).parts)
        for p in (root / top).rglob("__init__.py")
        if "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, zipfile.ZipFile]:
    """Both wheels, built by pip from a copy of the sources (a stale build/ in the checkout must not leak in)."""
    pytest.importorskip("setuptools")  # built without isolation: no network, this environment's setuptools
    tmp = tmp_path_factory.mktemp("wheels")
    src = tmp / "src"
    junk = shutil.ignore_patterns(
        "build", "dist", "*.egg-info", "__pycache__", ".venv", ".git", "tuimon-runs"
    )
    shutil.copytree(REPO / "agent", src / "agent", ignore=junk)
    shutil.copytree(REPO / "tuimon", src / "tuimon", ignore=junk)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + [str(src / "agent"), str(src), "-w", str(tmp / "dist")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (agent,) = (tmp / "dist").glob("tuimon_agent-*.whl")
    (viewer,) = (tmp / "dist").glob("tuimon-*.whl")
    return {"tuimon-agent": zipfile.ZipFile(agent), "tuimon": zipfile.ZipFile(viewer)}


@pytest.mark.slow  # builds both wheels (about 10 s)
@pytest.mark.parametrize(
    ("dist", "root", "top"), [("tuimon-agent", "agent", "tuimon_agent"), ("tuimon", ".", "tuimon")]
)
def test_each_wheel_holds_every_subpackage_and_its_data(
    wheels: dict[str, zipfile.ZipFile], dist: str, root: str, top: str
) -> None:
    names = set(wheels[dist].namelist())
    in_wheel = {n.rpartition("/")[0].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert _packages(REPO / root, top) == in_wheel
    sources = {
        str(p.relative_to(REPO / root))
        for p in (REPO / root / top).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert sources <= names, sorted(sources - names)
    assert f"{top}/py.typed" in names
    if top == "tuimon":
        assert {"tuimon/app.tcss", "tuimon/demo/digits.py"} <= names


@pytest.mark.slow
def test_the_wheels_metadata_pins_the_agent_it_was_built_with(wheels: dict[str, zipfile.ZipFile]) -> None:
    meta = {
        dist: next(w.read(n).decode() for n in w.namelist() if n.endswith(".dist-info/METADATA"))
        for dist, w in wheels.items()
    }
    assert f"\nVersion: {tuimon.__version__}\n" in meta["tuimon"]
    assert f"\nVersion: {tuimon_agent.__version__}\n" in meta["tuimon-agent"]
    assert f"\nRequires-Dist: tuimon-agent=={tuimon_agent.__version__}\n" in meta["tuimon"]
    assert "\nProvides-Extra: demo\n" in meta["tuimon"]


def test_the_readme_states_the_python_version_both_distributions_require() -> None:
    required = {
        tomllib.loads((REPO / p).read_text())["project"]["requires-python"]
        for p in ("pyproject.toml", "agent/pyproject.toml")
    }
    (spec,) = required
    floor = re.fullmatch(r">=(3\.\d+)", spec)
    assert floor is not None, spec
    stated = set(re.findall(r"Python (3\.\d+)\+", (REPO / "README.md").read_text()))
    assert stated == {floor.group(1)}


def test_version_names_both_distributions() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tuimon", "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"tuimon {tuimon.__version__}")
    assert lines[1].startswith(f"tuimon-agent {tuimon_agent.__version__}")


BLOCK_SKLEARN = "import sys; sys.modules['sklearn'] = None; "  # as if scikit-learn were not installed


def test_the_demo_without_scikit_learn_says_so_in_one_line() -> None:
    for code in (
        BLOCK_SKLEARN + "import runpy; runpy.run_module('tuimon.demo.digits', run_name='__main__')",
        BLOCK_SKLEARN + "from tuimon.cli import main; sys.exit(main(['demo']))",
    ):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.returncode == 1
        assert out.stderr.splitlines() == [
            "tuimon: the demo needs scikit-learn, which this Python lacks: pip install 'tuimon[demo]'"
        ], out.stderr
