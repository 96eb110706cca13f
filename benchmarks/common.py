"""Shared pieces of the benchmark scripts: the machine line, interleaved rounds, ratios, wall time and tables."""
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.benchmark import Timer

REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(threads=None) -> str:
    """One line naming the CPU, cores, Python, torch, torch threads (if fixed) and the UTC date."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    fixed = f", {threads} torch thread{'s' if threads != 1 else ''}" if threads else ""
    return (f"Machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()}, Python "
            f"{platform.python_version()}, torch {torch.__version__}{fixed}; {now}")


def clock(threads: int):
    """CPU time when torch runs on one thread, so other jobs on a shared machine cost a contender nothing."""
    return time.process_time if threads == 1 else time.perf_counter


def timed(call, threads: int, min_run_time: float):
    """A measure(): seconds per call() from a torch.utils.benchmark blocked_autorange (its median block)."""
    timer = Timer("call()", globals={"call": call}, num_threads=threads, timer=clock(threads))
    return lambda: timer.blocked_autorange(min_run_time=min_run_time).median


def interleave(measures: dict, rounds: int) -> dict:
    """Call each `name -> measure()` once per round, rotating who goes first, so a slow spell hits all alike.

    Returns name -> list of the seconds each measure() returned, one per round.
    """
    names = list(measures)
    seconds = {name: [] for name in names}
    for i in range(rounds):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            seconds[name].append(measures[name]())
    return seconds


def round_ratios(seconds: dict, name: str, baseline: str) -> list:
    """name/baseline in each round, each pair measured back to back in the same round."""
    return [a / b for a, b in zip(seconds[name], seconds[baseline])]


def median_ratio(seconds: dict, name: str, baseline: str) -> float:
    """The median over rounds of name/baseline."""
    return statistics.median(round_ratios(seconds, name, baseline))


def wall(command: list, env=None) -> float:
    """Seconds a command takes to run from the repository root; a failing command stops the benchmark."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} exited with {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return elapsed


def table(header: list, rows: list) -> str:
    """A markdown table; floats are printed with two decimals."""
    def cell(v):
        return f"{v:.2f}" if isinstance(v, float) else str(v)
    lines = [header, ["---"] * len(header)] + [[cell(v) for v in row] for row in rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)
