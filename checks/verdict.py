"""One file's verdict, the same for `python -m checks FILE` and for each file `grade` grades, with one JSON form.

A `Finding` is what the kit says about something that is not a single check's result: a file that would not load,
a notebook that stopped at a cell, a report that was not authentic. Check results are `checks.report.Result`.
Nothing here imports torch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from checks.report import Result

PASSED, FAILED, UNUSABLE = 0, 1, 2  # exit codes of `python -m checks FILE`
LIMIT = 2000  # characters kept of any one message or hint from a worker


def cut(text) -> str:
    """`text` as a string of at most LIMIT characters."""
    text = str(text)
    return text if len(text) <= LIMIT else text[:LIMIT - 1] + "…"
INTERRUPTED = 130  # Ctrl-C


@dataclass(frozen=True)
class Finding:
    """What was seen (`message`) and how to fix it (`hint`)."""

    message: str
    hint: str = ""


@dataclass
class Verdict:
    """What checking one file found.

    `results` are the checks' results (empty when none could run); `error` says why none could run; `stopped` says
    where a notebook's top-to-bottom run stopped early (the checks then ran on the class defined so far).
    `output` is what the file printed, cut to its first and last parts; `dropped` counts the bytes left out.
    """

    path: str
    results: list[Result] = field(default_factory=list)
    error: Finding | None = None
    stopped: Finding | None = None
    seconds: float = 0.0
    output: str = ""
    dropped: int = 0
    sandbox: str = ""  # grade only: "bwrap" or "none"
    interrupted: bool = False

    @property
    def passed(self) -> bool:
        return (not self.error and not self.stopped and not self.interrupted and bool(self.results)
                and all(r.passed for r in self.results))

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return INTERRUPTED
        if self.error and not self.results:
            return UNUSABLE
        return PASSED if self.passed else FAILED

    @property
    def failing(self) -> list[int]:
        return [r.id for r in self.results if not r.passed]

    @property
    def reason(self) -> str:
        """Why the file could not be checked, or else where its notebook stopped; "" when neither."""
        if self.interrupted:
            return "interrupted: grading stopped (Ctrl-C) before this file was done"
        if self.error:
            return self.error.message
        return self.stopped.message if self.stopped else ""

    @property
    def hint(self) -> str:
        found = self.error or self.stopped
        return found.hint if found else ""

    def to_dict(self) -> dict:
        """`{"path", "passed", "seconds", "checks": [...]}`; "error" and "hint" in place of "checks" when none ran;
        "stopped" (and "stopped_hint") when a notebook stopped early; "sandbox" when graded; "interrupted"."""
        item = {"path": self.path, "passed": self.passed, "seconds": round(self.seconds, 1)}
        if self.results:
            item["checks"] = [asdict(r) for r in self.results]
        else:
            item.update(error=self.reason or "no check ran", hint=self.hint)
        if self.error and self.results:
            item.update(error=self.error.message, hint=self.error.hint)
        if self.stopped:
            item.update(stopped=self.stopped.message, stopped_hint=self.stopped.hint)
        if self.sandbox:
            item["sandbox"] = self.sandbox
        if self.interrupted:
            item["interrupted"] = True
        if self.dropped:
            item["output_dropped_bytes"] = self.dropped
        return item
