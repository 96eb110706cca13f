"""Check one learner file in a child process with a time limit, and turn what it reported into an Outcome.

The learner's code is untrusted: a hang, a `sys.exit(0)`, a crash or a patched torch stays in the child, which
can only report through its events file. This side never imports torch, so it answers fast.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from checks.report import Result

KIT_ROOT = str(Path(__file__).resolve().parent.parent)

PASSED, FAILED, UNUSABLE = 0, 1, 2  # exit codes


@dataclass
class Outcome:
    """What checking one file found: check results, or an error saying why the file could not be checked."""

    path: str
    results: list[Result] = field(default_factory=list)
    error: str = ""
    hint: str = ""
    output: str = ""  # what the learner's code printed, and tracebacks: shown with --verbose

    @property
    def exit_code(self) -> int:
        if self.error and not self.results:
            return UNUSABLE
        return PASSED if self.results and all(r.passed for r in self.results) else FAILED


def read_events(path: Path) -> list[dict]:
    """The worker's JSON lines, up to the first incomplete one."""
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            break  # the child died mid-line
    return events


def check_file(path, timeout: float = 60.0) -> Outcome:
    """Run every check on the LoRALinear that `path` (.py or .ipynb) defines, in a child process."""
    path = Path(path)
    if not path.is_file():
        return Outcome(str(path), error=f"{path} does not exist or is not a file", hint="check the path")
    if path.suffix not in (".py", ".ipynb"):
        return Outcome(str(path), error=f"{path.name} is neither a .py file nor a notebook (.ipynb)",
                       hint="pass the .py file or the notebook that defines LoRALinear")
    with tempfile.TemporaryDirectory(prefix="lora-drill-") as scratch:
        events_path = Path(scratch, "events.jsonl")
        events_path.touch()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [KIT_ROOT, os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-m", "checks.worker", str(path.resolve()), str(events_path)]
        try:
            done = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True,
                                  errors="replace", timeout=timeout, stdin=subprocess.DEVNULL)
            output, code, timed_out = done.stdout + done.stderr, done.returncode, False
        except subprocess.TimeoutExpired as exc:
            output = "".join(t.decode(errors="replace") if isinstance(t, bytes) else (t or "")
                             for t in (exc.stdout, exc.stderr))
            code, timed_out = None, True
        return outcome_from_events(path, read_events(events_path), output, code, timed_out, timeout)


def outcome_from_events(path, events, output, code, timed_out, timeout) -> Outcome:
    """What a worker's events (checks/worker.py) and its end (exit code, or timed out) say about one file."""
    outcome = Outcome(str(path), output=output)
    results = [Result(**{k: e[k] for k in ("id", "name", "passed", "message", "hint")})
               for e in events if e["event"] == "result"]
    outcome.results = results
    last = events[-1] if events else {"event": "none"}
    kind = last["event"]
    if kind in ("load_error", "unusable"):
        outcome.error, outcome.hint = last["message"], last["hint"]
        if kind == "unusable":
            outcome.error = f"LoRALinear cannot be used: {outcome.error}"
    elif kind == "done":
        pass
    elif kind == "start":  # a check began and never reported
        why = f"did not finish within {timeout:g} s" if timed_out else f"ended the process (exit code {code})"
        outcome.results.append(Result(last["id"], last["name"], False,
                                      f"the check {why}: a forward or training step that never returns, "
                                      "or code that exits the process", "run your layer once by hand to see where it stops"))
    elif timed_out:
        stage = "loading the file" if kind == "none" else "building LoRALinear(8, 6) and running one forward"
        outcome.error = f"{stage} did not finish within {timeout:g} s"
        outcome.hint = "look for a loop that never ends, or work that runs when the file is loaded"
    else:
        stage = "while the file was loading" if kind == "none" else "after loading, before any check"
        outcome.error = f"the check process ended {stage} (exit code {code}) without reporting"
        outcome.hint = "remove calls that end the process (os._exit, sys.exit) from the file; --verbose shows its output"
    return outcome
