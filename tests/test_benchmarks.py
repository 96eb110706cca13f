"""The layer benchmark runs on a fresh install (its smallest setting) and its head-to-head column says what it
claims. Speed itself is never asserted: the benchmarks print ratios measured in one run."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_layers_benchmark_runs_and_prints_one_row_per_rank():
    done = subprocess.run([sys.executable, "benchmarks/layers.py", "--sizes", "256", "--rounds", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [line.split("|")[2].strip() for line in done.stdout.splitlines() if line.startswith("| 256 |")] == \
        ["4", "8", "64"]


def test_head_to_head_reports_the_library_the_reference_is_closest_to(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from layers import against_libraries

    rounds = 5
    seconds = {("fwd", "reference"): [1.0] * rounds, ("fwd", "loralib"): [2.0] * rounds,
               ("fwd", "peft"): [1.25] * rounds}
    assert against_libraries(seconds, "fwd") == "0.80 (0.80–0.80)"  # against peft, not the slower loralib
    seconds[("fwd", "peft")] = [0.5, 0.5, 0.5, 2.0, 2.0]  # per-round ratios 2, 2, 2, 0.5, 0.5
    assert against_libraries(seconds, "fwd").startswith("2.00 (0.50–")
    assert against_libraries(seconds, "step") == "skipped"  # no library timed
