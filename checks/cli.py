"""`python -m checks FILE`: run the drill's checks on the LoRALinear a .py file or notebook defines.

Two subcommands for instructors, chosen by the first argument: `grade PATH...` grades a cohort's notebooks and .py
files (checks/grade.py); `demo OUT.ipynb` writes an executed copy of the drill with the solution swapped in.
Exit codes: 0 every check passed · 1 a check failed · 2 the file could not be loaded or used, or bad usage.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from checks import notebook, report
from checks.verdict import FAILED, INTERRUPTED, PASSED, UNUSABLE


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m checks",
        description="Run the LoRA drill's sanity checks on the LoRALinear defined in FILE (.py or .ipynb). "
                    "Exit code 0: all checks passed; 1: a check failed; 2: FILE could not be loaded or used.",
        epilog="Instructors: `python -m checks grade PATH...` grades a cohort; `python -m checks demo OUT.ipynb` "
               "writes the drill executed with the reference solution. Each has its own --help.")
    p.add_argument("file", help="a .py file or a notebook that defines class LoRALinear")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--junit", metavar="FILE", help="also write the results as JUnit XML to FILE")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="time limit for loading and checking the file, in seconds (default: 60)")
    p.add_argument("--verbose", action="store_true", help="also show what the file printed, and tracebacks")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage error
        return UNUSABLE if exc.code else 0
    if args.timeout <= 0:
        print(f"--timeout must be a positive number of seconds; got {args.timeout:g}", file=sys.stderr)
        return UNUSABLE
    from checks import sandbox
    from checks.isolated import check_file

    sandbox.become_subreaper()  # what the file leaves running is adopted here, and killed below
    try:
        verdict = check_file(args.file, timeout=args.timeout)
    finally:
        sandbox.sweep()
    print(report.verdict_json(verdict) if args.json else report.render_verdict(verdict, args.verbose))
    if args.junit:
        report.write_atomically(args.junit, report.junit_text([verdict]))
    return verdict.exit_code


# ------------------------------------------------------------------------------------------ python -m checks grade


def _grade_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m checks grade",
        description="Grade a cohort: every file is checked exactly as `python -m checks FILE` checks it, from a "
                    "private copy, each in its own sandboxed process. No input file is changed and nothing is "
                    "written beside it. Exit code 0: every file passed; 1: a file failed or could not be graded; "
                    "2: bad usage; 130: interrupted (Ctrl-C), with the files graded so far reported.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="notebooks, .py files, or folders that hold them")
    p.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                   help="time limit per file, for running it and then checking it (default: 300)")
    p.add_argument("--sandbox", choices=("auto", "bwrap", "none"), default="auto",
                   help="run each file inside bubblewrap (bwrap), or not (none); auto: bwrap when it works here "
                        "(default: auto). The report names the one used.")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="files graded at once (default: 1)")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per file, instead of the table")
    p.add_argument("--csv", metavar="FILE", help="also write one row per file, with a column per check, to FILE")
    p.add_argument("--junit", metavar="FILE", help="also write JUnit XML to FILE: a test suite per file")
    return p


def _parse(parser: argparse.ArgumentParser, argv):
    """(arguments, 0); or (None, exit code) when argparse has printed a usage error or the help."""
    try:
        return parser.parse_args(argv), 0
    except SystemExit as exc:
        return None, (UNUSABLE if exc.code else 0)


def _report_paths_problem(args, files) -> str:
    """Why a report file cannot be written where asked, checked before any grading starts; "" if it can."""
    inputs = {f.resolve() for f in files}
    for option in ("csv", "junit"):
        target = getattr(args, option)
        if target is None:
            continue
        target = Path(target)
        if target.resolve() in inputs:
            return f"--{option} {target} is one of the files to grade; name a new file for the report"
        if not target.parent.is_dir():
            return f"--{option} {target}: the folder {target.parent} does not exist; create it or name another"
    return ""


def _progress(done: list, total: int):
    def show(v) -> None:
        done.append(v)
        word = "PASS" if v.passed else ("INTERRUPTED" if v.interrupted else "FAIL")
        print(f"[{len(done)}/{total}] {word} {report.clean(v.path, False)} ({v.seconds:.0f} s)", file=sys.stderr,
              flush=True)
    return show


def grade_main(argv) -> int:
    from checks import grade, sandbox
    from checks.collect import UsageError, collect
    from checks.isolated import KIT_ROOT

    args, code = _parse(_grade_parser(), argv)
    if args is None:
        return code
    if args.timeout <= 0 or args.jobs < 1:
        wrong = f"--timeout {args.timeout:g}" if args.timeout <= 0 else f"--jobs {args.jobs}"
        print(f"python -m checks grade: --timeout must be a positive number of seconds and --jobs at least 1; "
              f"got {wrong}", file=sys.stderr)
        return UNUSABLE
    try:
        files = collect(args.paths)
    except UsageError as exc:
        print(f"python -m checks grade: {exc}", file=sys.stderr)
        return UNUSABLE
    problem = _report_paths_problem(args, files)
    if problem:
        print(f"python -m checks grade: {problem}", file=sys.stderr)
        return UNUSABLE
    kind, why = sandbox.choose(args.sandbox, KIT_ROOT)
    if not kind:
        print(f"python -m checks grade: --sandbox bwrap, but {why}; install bubblewrap, or pass --sandbox none "
              "to grade without a sandbox", file=sys.stderr)
        return UNUSABLE
    if kind == "none" and args.sandbox == "auto":
        print(f"python -m checks grade: grading without a sandbox ({why})", file=sys.stderr)
    verdicts, interrupted = grade.grade_all(files, args.timeout, args.jobs, kind,
                                            on_done=_progress([], len(files)))
    # Every submission's process is gone by now (grade_all sweeps them): the reports cannot be touched.
    print(report.cohort_json(verdicts) if args.json else report.cohort_table(verdicts), flush=True)
    if args.csv:
        report.write_atomically(args.csv, report.csv_text(verdicts))
    if args.junit:
        report.write_atomically(args.junit, report.junit_text(verdicts))
    if interrupted:
        print("python -m checks grade: interrupted (Ctrl-C); the files not yet graded are marked so", file=sys.stderr)
        return INTERRUPTED
    return PASSED if all(v.passed for v in verdicts) else FAILED


# ------------------------------------------------------------------------------------------ python -m checks demo


def _demo_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m checks demo",
        description="Write an executed copy of lora_mock.ipynb with the reference solution swapped in to OUT "
                    "(and OUT with .html when nbconvert is installed). lora_mock.ipynb itself is left untouched. "
                    "Exit code 0: the notebook ran through; 1: it stopped at an error (the copy shows where); "
                    "2: bad usage.")
    p.add_argument("out", metavar="OUT.ipynb", help="where to write the executed notebook")
    p.add_argument("--timeout", type=float, default=900.0, metavar="SECONDS",
                   help="time limit for running the whole notebook (default: 900)")
    return p


def demo_main(argv) -> int:
    from checks import demo  # nbclient takes half a second to import: only the demo pays for it

    args, code = _parse(_demo_parser(), argv)
    if args is None:
        return code
    out = Path(args.out)
    problem = notebook.output_problem(out, demo.NOTEBOOK, "lora_solved.ipynb")
    if args.timeout <= 0:
        problem = f"--timeout must be a positive number of seconds; got {args.timeout:g}"
    if problem:
        print(f"python -m checks demo: {problem}", file=sys.stderr)
        return UNUSABLE
    try:
        stop, written = demo.demo(out, args.timeout)
    except ValueError as exc:  # the drill's own notebook cannot be read
        print(f"python -m checks demo: {exc}", file=sys.stderr)
        return UNUSABLE
    for path in written:
        print(f"wrote {path}")
    if len(written) == 1:
        print("(no HTML copy: nbconvert is not installed; `pip install nbconvert` adds one)")
    if stop:
        print(f"the demo notebook did not run through: {stop.message}\n  hint: {stop.hint}", file=sys.stderr)
        return FAILED
    return PASSED


SUBCOMMANDS = {"grade": grade_main, "demo": demo_main,
               "handout": lambda argv: __import__("checks.handout", fromlist=["main"]).main(argv)}
