"""Benchmark: the checks' feedback latency, `python -m checks solution/lora.py` against a bare `import torch`.

Run from the repository root: python benchmarks/feedback_latency.py [--rounds N]
"""
import argparse
import statistics
import sys

from common import interleave, machine, median_ratio, table, wall

COMMANDS = {
    "python -m checks solution/lora.py": [sys.executable, "-m", "checks", "solution/lora.py"],
    'python -c "import torch"': [sys.executable, "-c", "import torch"],
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    args = parser.parse_args(argv)
    for command in COMMANDS.values():
        wall(command)  # warm the file cache, so the first round is not the only one reading from disk
    seconds = interleave({name: (lambda c=command: wall(c)) for name, command in COMMANDS.items()}, args.rounds)
    checks, bare = COMMANDS
    print(machine())
    print(f"Wall time from the repository root, {args.rounds} interleaved rounds after one warm-up run each; "
          f"ratio = median {checks} / median bare import (median of the per-round ratios alongside).\n")
    rows = [[name, f"{statistics.median(s):.2f}", f"{min(s):.2f}", f"{max(s):.2f}"] for name, s in seconds.items()]
    print(table(["command", "median s", "fastest s", "slowest s"], rows))
    ratio = statistics.median(seconds[checks]) / statistics.median(seconds[bare])
    print(f"\nratio of medians: {ratio:.2f}; median of per-round ratios: {median_ratio(seconds, checks, bare):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
