"""One result model for every check, and its views: notebook line and table, a file's verdict on the terminal,
a cohort's table, JSON, CSV and JUnit XML.

Every text that came from a learner's file (messages, hints, output, file names) passes through `clean` before it
is rendered, so control characters cannot repaint a terminal or break a CSV or XML file.
Nothing here imports torch, so the command line can report without paying for it.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import tempfile
import unicodedata
import xml.etree.ElementTree as ET
from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    """What one check found: `message` says what was seen; `hint` says how to fix it (failures only)."""

    id: int
    name: str
    passed: bool
    message: str
    hint: str = ""

    def line(self) -> str:
        mark = "✓" if self.passed else "✗"
        text = f"{mark} check {self.id} · {self.name} — {self.message}"
        return text + (f"\n    hint: {self.hint}" if self.hint else "")


class CheckFailed(AssertionError):
    """A check failed, or the layer could not be used: the message is the whole story, so the notebook shows
    only it, not a traceback from inside the kit."""

    def __init__(self, text: str, results: tuple[Result, ...] = ()):
        super().__init__(text)
        self.results = results

    def _render_traceback_(self):  # IPython calls this instead of printing the traceback
        return [f"CheckFailed: {self}"]


def table(results, title: str = "") -> str:
    """The terminal and notebook view: one line per check, then the count."""
    lines = [title] if title else []
    lines += [r.line() for r in results]
    passed = sum(r.passed for r in results)
    lines.append(f"{passed} of {len(results)} checks passed.")
    return "\n".join(lines)



# ANSI/VT escape sequences (CSI, OSC, and two-byte ESC forms), then any control or format character left.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]|\x9b[0-?]*[ -/]*[@-~]")


def clean(text, keep_newlines: bool = True) -> str:
    """`text` without escape sequences and control or format characters (\\r, \\x00, bidi overrides…);
    a tab becomes a space; newlines stay unless `keep_newlines` is false (then they become spaces)."""
    text = _ESCAPES.sub("", str(text)).replace("\t", " ")
    if not keep_newlines:
        text = text.replace("\n", " ")
    return "".join(ch for ch in text if ch == "\n" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co"))


def _cleaned(r: Result) -> Result:
    return Result(r.id, clean(r.name, False), r.passed, clean(r.message), clean(r.hint))


# ------------------------------------------------------------------------------------------ one file (the CLI)


def render_verdict(v, verbose: bool = False) -> str:
    """The terminal view of one file's verdict (checks.verdict.Verdict)."""
    path = clean(v.path, False)
    if v.results:
        text = table([_cleaned(r) for r in v.results], title=f"LoRA drill checks for {path}")
        if v.stopped:
            text += f"\nbut the notebook did not run to its end: {clean(v.stopped.message)}"
            text += f"\n  hint: {clean(v.stopped.hint)}" if v.stopped.hint else ""
        if v.error:
            text += f"\n{clean(v.error.message)}" + (f"\n  hint: {clean(v.error.hint)}" if v.error.hint else "")
    else:
        text = f"lora-drill could not check {path}:\n  {clean(v.reason)}"
        text += f"\n  hint: {clean(v.hint)}" if v.hint else ""
        if v.error and v.stopped:
            text += f"\n  (before that, {clean(v.stopped.message)})"
    if verbose and v.output.strip():
        text += "\n\n--- output of the checked code ---\n" + clean(v.output).rstrip()
    if verbose and v.dropped:
        text += f"\n(--- {v.dropped} bytes of output dropped from the middle ---)"
    return text


def verdict_json(v) -> str:
    return json.dumps(v.to_dict(), ensure_ascii=False)


# ------------------------------------------------------------------------------------------ a cohort (grade)


def _verdict_word(v) -> str:
    return "INTERRUPTED" if v.interrupted else ("PASS" if v.passed else "FAIL")


def _failing_text(v) -> str:
    return (", ".join(map(str, v.failing)) or "-") if v.results else "not checked"


def cohort_table(verdicts) -> str:
    """The terminal view: one row per file, then what went wrong in each failing file."""
    rows = [("file", "verdict", "failing checks", "time", "sandbox")]
    rows += [(clean(v.path, False), _verdict_word(v), _failing_text(v), f"{v.seconds:.0f} s", v.sandbox or "-")
             for v in verdicts]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"{sum(v.passed for v in verdicts)} of {len(verdicts)} files passed.")
    interrupted = sum(v.interrupted for v in verdicts)
    if interrupted:
        lines.append(f"{interrupted} not graded: interrupted.")
    for v in verdicts:
        lines += [] if v.passed or v.interrupted else ["", f"{clean(v.path, False)}:", *_details(v)]
    return "\n".join(lines)


def _details(v) -> list[str]:
    lines = [f"  {clean(v.reason)}"] if v.reason else []
    if v.reason and v.hint:
        lines.append(f"    hint: {clean(v.hint)}")
    if v.error and v.stopped:
        lines.append(f"  ({clean(v.stopped.message)})")
    return lines + ["  " + _cleaned(r).line().replace("\n", "\n  ") for r in v.results if not r.passed]


def cohort_json(verdicts) -> str:
    return json.dumps([v.to_dict() for v in verdicts], ensure_ascii=False, indent=1)


def write_atomically(path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then move it into place: a reader sees all of it or none."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=".lora-drill-", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def csv_text(verdicts) -> str:
    """One row per file: verdict, counts, failing checks, reason, time, sandbox, then one column per check."""
    ids = sorted({r.id for v in verdicts for r in v.results})
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["path", "verdict", "checks_passed", "checks_run", "failing_checks", "reason", "seconds", "sandbox",
                *(f"check_{i}" for i in ids)])
    for v in verdicts:
        by_id = {r.id: ("pass" if r.passed else "fail") for r in v.results}
        w.writerow([clean(v.path, False), _verdict_word(v), sum(r.passed for r in v.results), len(v.results),
                    " ".join(map(str, v.failing)), clean(v.reason, False), f"{v.seconds:.1f}", v.sandbox,
                    *(by_id.get(i, "") for i in ids)])
    return out.getvalue()


def junit_text(verdicts) -> str:
    """JUnit XML: one <testsuite> per file, a <testcase> per check; a file no check could run on is one <error>;
    a notebook that stopped early gets a failing "runs top to bottom" case."""
    root = ET.Element("testsuites")
    for v in verdicts:
        name = clean(v.path, False)
        suite = ET.SubElement(root, "testsuite", name=name, time=f"{v.seconds:.1f}")
        failures = errors = tests = 0
        for r in map(_cleaned, v.results):
            tests += 1
            case = ET.SubElement(suite, "testcase", classname=name, name=f"check {r.id}: {r.name}")
            if not r.passed:
                failures += 1
                ET.SubElement(case, "failure", message=r.message).text = r.hint
        if v.stopped and v.results:
            tests, failures = tests + 1, failures + 1
            case = ET.SubElement(suite, "testcase", classname=name, name="runs top to bottom")
            ET.SubElement(case, "failure", message=clean(v.stopped.message)).text = clean(v.stopped.hint)
        if v.error or v.interrupted or not v.results:
            tests, errors = tests + 1, errors + 1
            case = ET.SubElement(suite, "testcase", classname=name, name="load")
            ET.SubElement(case, "error", message=clean(v.reason or "no check ran")).text = clean(v.hint)
        suite.set("tests", str(tests))
        suite.set("failures", str(failures))
        suite.set("errors", str(errors))
    ET.indent(root)
    return "<?xml version='1.0' encoding='utf-8'?>\n" + ET.tostring(root, encoding="unicode") + "\n"
