"""`python -m checks FILE`: run the drill's checks on the LoRALinear a .py file or notebook defines.

Exit codes: 0 every check passed · 1 a check failed · 2 the file could not be loaded or used, or bad usage.
"""
from __future__ import annotations

import argparse
import json
import sys

from checks import report
from checks.isolated import UNUSABLE, Outcome, check_file


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m checks",
        description="Run the LoRA drill's sanity checks on the LoRALinear defined in FILE (.py or .ipynb). "
                    "Exit code 0: all checks passed; 1: a check failed; 2: FILE could not be loaded or used.")
    p.add_argument("file", help="a .py file or a notebook that defines class LoRALinear")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--junit", metavar="FILE", help="also write the results as JUnit XML to FILE")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="time limit for loading and checking the file, in seconds (default: 60)")
    p.add_argument("--verbose", action="store_true", help="also show what the file printed, and tracebacks")
    return p


def render(outcome: Outcome, verbose: bool = False) -> str:
    """The terminal view of one file's outcome."""
    if outcome.error and not outcome.results:
        text = f"lora-drill could not check {outcome.path}:\n  {outcome.error}"
        text += f"\n  hint: {outcome.hint}" if outcome.hint else ""
    else:
        text = report.table(outcome.results, title=f"LoRA drill checks for {outcome.path}")
    if verbose and outcome.output.strip():
        text += "\n\n--- output of the checked code ---\n" + outcome.output.rstrip()
    return text


def main(argv=None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage error
        return UNUSABLE if exc.code else 0
    if args.timeout <= 0:
        print(f"--timeout must be a positive number of seconds; got {args.timeout:g}", file=sys.stderr)
        return UNUSABLE
    outcome = check_file(args.file, timeout=args.timeout)
    if args.json:
        extra = {"path": outcome.path}
        if outcome.error and not outcome.results:
            extra.update(error=outcome.error, hint=outcome.hint)
        print(report.to_json(outcome.results, **extra))
    else:
        print(render(outcome, args.verbose))
    if args.junit:
        suite = report.junit_suite(outcome.results, outcome.path, "" if outcome.results else outcome.error)
        report.write_junit(args.junit, [suite])
    return outcome.exit_code
