"""Grade a cohort: each notebook runs in its own kernel on a copy, then the checks run on the LoRALinear it defined.

A notebook is executed top to bottom with nbclient in a fresh temporary folder, stopping at its first error as
Jupyter's "Run all" does; then one more cell, run in the same kernel, checks the `LoRALinear` the notebook left
behind and writes the worker's events (see checks/worker.py) to a file this side reads back. A `.py` file is
checked exactly as `python -m checks FILE` checks it. Files are graded in parallel threads: each notebook's work
happens in its kernel process and each `.py` file's in a child process, so the threads only wait.
This side never imports torch; the kernel does.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from nbformat.reader import NotJSONError

from checks import report
from checks.drill import SWAP_VARIABLE
from checks.isolated import KIT_ROOT, PASSED, Outcome, outcome_from_events, read_events, check_file

NOTEBOOK = Path(KIT_ROOT, "lora_mock.ipynb")
GRADABLE = (".ipynb", ".py")


class UsageError(Exception):
    """The command was given something it cannot grade at all (exit code 2), as opposed to a failing file."""


@dataclass
class Stop:
    """Why a notebook's run ended before its last cell: `kind` is "error", "timeout" or "died"."""

    kind: str
    message: str
    hint: str = ""


@dataclass
class Graded:
    """One file's verdict: the checks' outcome, where its run stopped early ("" if it ran through), and the time."""

    outcome: Outcome
    stopped: str = ""
    seconds: float = 0.0

    @property
    def path(self) -> str:
        return self.outcome.path

    @property
    def passed(self) -> bool:
        return self.outcome.exit_code == PASSED and not self.stopped

    @property
    def failing(self) -> list[int]:
        return [r.id for r in self.outcome.results if not r.passed]

    @property
    def reason(self) -> str:
        """Why the file could not be checked, or else where its notebook stopped."""
        return self.outcome.error if not self.outcome.results else self.stopped


# ---------------------------------------------------------------------------------------------- which files


def collect(paths) -> list[Path]:
    """The .ipynb and .py files named, or found under the folders named (hidden folders skipped), in order."""
    found: dict[Path, Path] = {}
    for given in map(Path, paths):
        if given.is_dir():
            inside = sorted(p for p in given.rglob("*") if p.suffix in GRADABLE and p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(given).parts))
            if not inside:
                raise UsageError(f"{given} holds no .ipynb or .py file to grade")
            files = inside
        elif given.is_file():
            if given.suffix not in GRADABLE:
                raise UsageError(f"{given} is neither a notebook (.ipynb) nor a .py file; "
                                 "pass learners' notebooks, .py files, or folders that hold them")
            files = [given]
        else:
            raise UsageError(f"{given} does not exist; check the path")
        for f in files:
            found.setdefault(f.resolve(), f)
    return list(found.values())


# ---------------------------------------------------------------------------------------------- running a notebook


def kernel_env(solution: bool, threads: int = 0) -> dict[str, str]:
    """The kernel's environment: the kit importable, and the solution swapped in only when asked for.

    LORA_DRILL_SOLUTION is removed for grading whatever the caller's environment holds (pytest's conftest sets it),
    or every learner would be graded on the reference solution."""
    env = {k: v for k, v in os.environ.items() if k != SWAP_VARIABLE}
    if solution:
        env[SWAP_VARIABLE] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [KIT_ROOT, os.environ.get("PYTHONPATH")]))
    if threads:  # parallel kernels each take all cores by default and then fight over them
        env.setdefault("OMP_NUM_THREADS", str(threads))
    return env


class ThisInterpreter(KernelSpecManager):
    """Every kernel is this interpreter's ipykernel, whatever kernelspecs the machine has: the kernel runs this kit."""

    def get_kernel_spec(self, kernel_name):
        from ipykernel.kernelspec import RESOURCES, get_kernel_dict

        return self.kernel_spec_class(resource_dir=RESOURCES, **get_kernel_dict())


def _client(nb, scratch: str, deadline: float) -> NotebookClient:
    """A client whose every cell may use what is left of the notebook's time, and no more."""
    km = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=ThisInterpreter())
    return NotebookClient(nb, km=km, resources={"metadata": {"path": scratch}},
                          timeout_func=lambda cell: max(0.1, deadline - time.monotonic()),
                          startup_timeout=max(1, int(deadline - time.monotonic())), shutdown_kernel="immediate")


def _launch(scratch: str, env: dict) -> dict:
    """How the kernel process starts: in the scratch folder, and quiet (its start-up warnings are not the learner's)."""
    return {"env": env, "cwd": scratch, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL,
            "cleanup_kc": True}  # the client was handed its kernel manager, so it must be told to shut the kernel


def _first_line(text: str, width: int = 60) -> str:
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    return line if len(line) <= width else line[:width - 1] + "…"


def _kernel_exit_code(client: NotebookClient):
    process = getattr(getattr(client.km, "provisioner", None), "process", None)
    return process.poll() if process is not None else "unknown"


def _start(client: NotebookClient, stack: ExitStack, scratch: str, env: dict) -> Stop | None:
    """Start the client's kernel, to be shut down when `stack` closes; a Stop saying why if it would not start."""
    try:
        stack.enter_context(client.setup_kernel(**_launch(scratch, env)))
    except Exception as exc:  # the machine's problem, not the learner's: said without a traceback
        return Stop("died", f"the notebook's kernel did not start: {type(exc).__name__}: {_first_line(str(exc), 120)}",
                    "check that ipykernel is installed in the Python that runs the kit")
    return None


def run_cells(client: NotebookClient, nb, deadline: float, timeout: float) -> Stop | None:
    """Execute every cell in order, as "Run all" does; return why it stopped early, or None if it ran through."""
    for index, cell in enumerate(nb.cells):
        where = f"cell {index + 1} (`{_first_line(cell.source)}`)"
        try:
            if time.monotonic() >= deadline:
                raise CellTimeoutError(f"no time left for {where}")
            client.execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
        except CellExecutionError as exc:
            return Stop("error", f"the notebook stopped at {where}: {exc.ename}: {_first_line(exc.evalue, 120)}",
                        "run the notebook top to bottom (Restart & Run all) to see the error in place")
        except CellTimeoutError:
            return Stop("timeout", f"{where} was still running when the notebook's {timeout:g} s ran out",
                        "look for a loop that never ends or a forward that never returns; "
                        "if the notebook is only slow, grade it with a larger --timeout")
        except DeadKernelError:
            return Stop("died", f"the kernel died while running {where} (exit code {_kernel_exit_code(client)})",
                        "remove calls that end the process (exit(), os._exit); a crash in native code or "
                        "running out of memory also ends it")
    return None


def read_notebook(path: Path, shown: str):
    """The notebook at `path`; raises ValueError, with a message naming the file, when it cannot be read as one."""
    try:
        return nbformat.read(path, as_version=4)
    except NotJSONError:
        raise ValueError(f"{shown} is not a valid notebook: it is not JSON (a file cut short, or not a notebook "
                         "at all)") from None
    except Exception as exc:  # nbformat raises several kinds: not JSON, not a notebook, an unknown version
        raise ValueError(f"{shown} is not a valid notebook: {_first_line(str(exc), 120) or type(exc).__name__}") \
            from None


# ---------------------------------------------------------------------------------------------- checks, in the kernel


def check_in_kernel(namespace: dict, events_path: str) -> None:
    """Runs inside the notebook's kernel: every check on the notebook's LoRALinear, written as worker events."""
    from checks.worker import emit_checks, events_to

    with events_to(events_path) as emit:
        cls = namespace.get("LoRALinear")
        problem = _not_the_learners_class(cls)
        if problem:
            emit("load_error", message=problem[0], hint=problem[1])
            return
        emit("loaded")
        emit_checks(cls, emit)


def _not_the_learners_class(cls) -> tuple[str, str] | None:
    if not isinstance(cls, type):
        seen = "" if cls is None else f" (LoRALinear is a {type(cls).__name__})"
        return (f"the notebook never defined a class LoRALinear{seen}",
                "keep the stub's name: `class LoRALinear(nn.Module):` in the Part 3 cell")
    if any(getattr(k, "__module__", "").split(".")[0] == "solution" for k in cls.__mro__):
        return ("LoRALinear is the kit's reference solution, not the learner's class",
                f"remove the import of `solution` and any setting of {SWAP_VARIABLE} from the notebook")
    return None


def _checking_cell(events_path: Path):
    source = (f"import checks.grade as _lora_drill_grade\n"
              f"_lora_drill_grade.check_in_kernel(globals(), {str(events_path)!r})\n")
    return nbformat.v4.new_code_cell(source)


def _check_in_same_kernel(client, nb, shown: str, events: Path, deadline: float, timeout: float) -> Outcome:
    """Append the checking cell, run it in the kernel the notebook used, and read back what it reported."""
    events.touch()
    nb.cells.append(_checking_cell(events))
    timed_out, code = False, 0
    try:
        if time.monotonic() >= deadline:
            raise CellTimeoutError("no time left for the checks")
        client.execute_cell(nb.cells[-1], len(nb.cells) - 1)
    except CellTimeoutError:
        timed_out = True
    except DeadKernelError:
        code = _kernel_exit_code(client)
    except CellExecutionError as exc:  # the kit itself failed in the kernel: not the learner's doing
        return Outcome(shown, error=f"the checks could not run in the notebook's kernel: {exc.ename}: "
                                    f"{_first_line(exc.evalue, 120)}",
                       hint="check that the kit is installed in the Python that runs the kernel")
    return outcome_from_events(shown, read_events(events), "", code, timed_out, timeout)


# ---------------------------------------------------------------------------------------------- grading


def grade_notebook(path: Path, timeout: float, threads: int = 0) -> Graded:
    """Run a copy of the notebook in its own kernel, then check the LoRALinear it defined, within `timeout` s."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lora-drill-grade-") as scratch:
        copy = Path(scratch, path.name)
        shutil.copyfile(path, copy)
        try:
            nb = read_notebook(copy, path.name)
        except ValueError as exc:
            outcome, stop = Outcome(str(path), error=str(exc), hint="open it in Jupyter and save it again"), None
        else:
            outcome, stop = _run_and_check(nb, str(path), scratch, start + timeout, timeout, threads)
    stopped = stop.message if stop and stop.kind == "error" else ""
    return Graded(outcome, stopped, time.monotonic() - start)


def _run_and_check(nb, shown, scratch, deadline, timeout, threads) -> tuple[Outcome, Stop | None]:
    """Run the notebook's cells in a fresh kernel; then, unless it hung or died, the checks in that same kernel."""
    client = _client(nb, scratch, deadline)
    with ExitStack() as kernel:
        stop = _start(client, kernel, scratch, kernel_env(False, threads)) or run_cells(client, nb, deadline, timeout)
        if stop and stop.kind != "error":
            return Outcome(shown, error=stop.message, hint=stop.hint), stop
        events = Path(scratch, ".lora-drill-events.jsonl")
        return _check_in_same_kernel(client, nb, shown, events, deadline, timeout), stop


def grade_file(path: Path, timeout: float, threads: int = 0) -> Graded:
    """One file's verdict; whatever goes wrong with this file is reported on it, so the others still get graded."""
    start = time.monotonic()
    try:
        if path.suffix == ".ipynb":
            return grade_notebook(path, timeout, threads)
        return Graded(check_file(path, timeout=timeout), seconds=time.monotonic() - start)
    except Exception as exc:  # e.g. an unreadable file; a kit bug would also land here rather than stop the cohort
        outcome = Outcome(str(path), error=f"grading {path.name} failed: {type(exc).__name__}: {exc}",
                          hint="check that the file can be read")
        return Graded(outcome, seconds=time.monotonic() - start)


def grade_all(files, timeout: float, jobs: int, on_done=None) -> list[Graded]:
    """Grade every file, `jobs` at a time; the verdicts come back in the order of `files`."""
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(grade_file, f, timeout, threads) for f in files]
        if on_done:
            for future in futures:
                future.add_done_callback(lambda f: on_done(f.result()))
        return [f.result() for f in futures]


# ---------------------------------------------------------------------------------------------- the demo


def demo(out: Path, timeout: float, source: Path = NOTEBOOK) -> tuple[Stop | None, list[Path]]:
    """Execute a copy of the drill with the solution swapped in; write it to `out` (and `out`.html with nbconvert)."""
    nb = read_notebook(source, source.name)
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="lora-drill-demo-") as scratch, ExitStack() as kernel:
        client = _client(nb, scratch, deadline)
        stop = _start(client, kernel, scratch, kernel_env(solution=True)) or run_cells(client, nb, deadline, timeout)
    nbformat.write(nb, out)
    written = [out]
    html = export_html(nb, out.with_suffix(".html"))
    return stop, written + ([html] if html else [])


def export_html(nb, path: Path) -> Path | None:
    """An HTML copy of `nb` at `path` when nbconvert is installed; None (and nothing written) when it is not."""
    try:
        from nbconvert import HTMLExporter
    except ImportError:
        return None
    body, _ = HTMLExporter().from_notebook_node(nb)
    path.write_text(body, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- the report's views


def verdict(g: Graded) -> str:
    return "PASS" if g.passed else "FAIL"


def _failing_text(g: Graded) -> str:
    if not g.outcome.results:
        return "not checked"
    return ", ".join(map(str, g.failing)) or "-"


def table(graded: list[Graded]) -> str:
    """The terminal view: one row per file, then what went wrong in each failing file."""
    rows = [("file", "verdict", "failing checks", "time")]
    rows += [(g.path, verdict(g), _failing_text(g), f"{g.seconds:.0f} s") for g in graded]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"{sum(g.passed for g in graded)} of {len(graded)} files passed.")
    for g in graded:
        lines += [] if g.passed else ["", f"{g.path}:", *_details(g)]
    return "\n".join(lines)


def _details(g: Graded) -> list[str]:
    """What went wrong in one file: the reason (and hint), where its notebook stopped, and each failing check."""
    lines = [f"  {g.reason}"] if g.reason else []
    if g.reason and g.outcome.hint and not g.outcome.results:
        lines.append(f"    hint: {g.outcome.hint}")
    if g.stopped and g.stopped != g.reason:
        lines.append(f"  ({g.stopped})")
    return lines + ["  " + r.line().replace("\n", "\n  ") for r in g.outcome.results if not r.passed]


def as_dict(g: Graded) -> dict:
    """`{"path", "passed", "seconds", "checks": [...]}`, with "error" and "hint" instead of checks when none ran,
    and "stopped" when a notebook stopped before its end."""
    item = {"path": g.path, "passed": g.passed, "seconds": round(g.seconds, 1)}
    if g.outcome.results:
        item["checks"] = [asdict(r) for r in g.outcome.results]
    else:
        item.update(error=g.outcome.error, hint=g.outcome.hint)
    if g.stopped:
        item["stopped"] = g.stopped
    return item


def to_json(graded: list[Graded]) -> str:
    return json.dumps([as_dict(g) for g in graded], ensure_ascii=False, indent=1)


def write_csv(path, graded: list[Graded]) -> None:
    """One row per file, for a spreadsheet: verdict, counts, failing checks, reason, time, then one column per check."""
    ids = sorted({r.id for g in graded for r in g.outcome.results})
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["path", "verdict", "checks_passed", "checks_run", "failing_checks", "reason", "seconds",
                      *(f"check_{i}" for i in ids)])
        for g in graded:
            by_id = {r.id: ("pass" if r.passed else "fail") for r in g.outcome.results}
            out.writerow([g.path, verdict(g), sum(r.passed for r in g.outcome.results), len(g.outcome.results),
                          " ".join(map(str, g.failing)), g.reason, f"{g.seconds:.1f}",
                          *(by_id.get(i, "") for i in ids)])


def write_junit(path, graded: list[Graded]) -> None:
    """One <testsuite> per file (report.junit_suite), plus a failing case when a notebook stopped early."""
    suites = []
    for g in graded:
        suite = report.junit_suite(g.outcome.results, g.path, "" if g.outcome.results else g.outcome.error)
        suite.set("time", f"{g.seconds:.1f}")
        if g.stopped and g.outcome.results:
            case = ET.SubElement(suite, "testcase", classname=g.path, name="runs top to bottom")
            ET.SubElement(case, "failure", message=g.stopped)
            suite.set("tests", str(int(suite.get("tests")) + 1))
            suite.set("failures", str(int(suite.get("failures")) + 1))
        suites.append(suite)
    report.write_junit(path, suites)
