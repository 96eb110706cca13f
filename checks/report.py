"""One result model for every check, and its views: notebook line, terminal table, JSON, JUnit XML.

Nothing here imports torch, so the command line can report without paying for it.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass


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


def to_json(results, **extra) -> str:
    """`{"passed": bool, "checks": [{"id", "name", "passed", "message", "hint"}, ...]}`, plus any extra keys."""
    payload = {"passed": bool(results) and all(r.passed for r in results), **extra}
    payload["checks"] = [asdict(r) for r in results]
    return json.dumps(payload, ensure_ascii=False)


def junit_suite(results, name: str, error: str = "") -> ET.Element:
    """One <testsuite>: a <testcase> per check; a file that could not be used is one <error> case."""
    suite = ET.Element("testsuite", name=name, tests=str(len(results) or 1))
    failures = 0
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=name, name=f"check {r.id}: {r.name}")
        if not r.passed:
            failures += 1
            ET.SubElement(case, "failure", message=r.message).text = r.hint
    if error:
        case = ET.SubElement(suite, "testcase", classname=name, name="load")
        ET.SubElement(case, "error", message=error)
    suite.set("failures", str(failures))
    suite.set("errors", "1" if error else "0")
    return suite


def write_junit(path, suites) -> None:
    root = ET.Element("testsuites")
    root.extend(suites)
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
