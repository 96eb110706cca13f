"""Shared helpers: run the command line on a learner file, and write learner files under tmp_path."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_checks(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m checks ARGS` from the repository root, as a learner would run it."""
    return subprocess.run([sys.executable, "-m", "checks", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


def run_json(path, *args) -> tuple[int, dict]:
    done = run_checks(path, "--json", *args)
    return done.returncode, json.loads(done.stdout)


def failing(report: dict) -> set[int]:
    return {c["id"] for c in report["checks"] if not c["passed"]}


@pytest.fixture
def learner_file(tmp_path):
    """Write `source` to tmp_path/name and return its path."""
    def write(source: str, name: str = "layer.py") -> Path:
        path = tmp_path / name
        path.write_text(source, encoding="utf-8")
        return path
    return write


def import_as_layer(module: str, cls: str) -> str:
    """A learner file whose LoRALinear is a class from the tests package."""
    return f"from {module} import {cls} as LoRALinear\n"
