"""Shared fixtures: the repository root, a CLI runner, and tiny configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def tool_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses: the venv's tools first on PATH, a git identity, no colour."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("GIT_AUTHOR_NAME", "pipeline tests")
    env.setdefault("GIT_AUTHOR_EMAIL", "tests@localhost")
    env.setdefault("GIT_COMMITTER_NAME", "pipeline tests")
    env.setdefault("GIT_COMMITTER_EMAIL", "tests@localhost")
    env["DVC_NO_ANALYTICS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_step(*args: str, cwd: Path | str = REPO, check: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m pipeline_steps <args>`` and capture its output."""
    proc = subprocess.run([sys.executable, "-m", "pipeline_steps", *args], cwd=cwd, env=tool_env(),
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"step failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """A user error: non-zero exit, one stderr line starting with 'error:', no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def repo() -> Path:
    return REPO
