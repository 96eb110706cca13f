"""Check one learner file in a worker process (checks/worker.py) and turn its signed report into a Verdict.

The learner's code is untrusted. It runs in the worker, which reports only over an inherited pipe, each message
signed with a key this side made for the run (checks/channel.py). This side accepts the messages in one order
only; verifies that the checks that ran are the kit's (fingerprints against the kit's source text) and that
learner code did not change the kit while it ran; and judges whose class it was (checks/provenance.py). Anything
else is a failure with a message saying what happened, never a pass. The worker's output is read as it comes
and only its first and last OUTPUT_KEEP bytes are kept. This side never imports torch, so it answers fast.
"""
from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import threading
import time
from pathlib import Path

from checks import channel, sandbox
from checks.drill import SWAP_VARIABLE
from checks.judge import Exam
from checks.report import Result
from checks.verdict import Finding, Verdict

KIT_ROOT = str(Path(__file__).resolve().parent.parent)
OUTPUT_KEEP = 64 * 1024  # bytes kept from the start and from the end of a worker's output
BOOT = "import sys; sys.path.insert(0, sys.argv[1]); from checks.worker import run; run(sys.argv[1:])"


class Capped:
    """The first and last `keep` bytes of a stream, and how many bytes in between were dropped."""

    def __init__(self, keep: int = OUTPUT_KEEP):
        self.keep, self.head, self.tail, self.dropped = keep, bytearray(), bytearray(), 0

    def add(self, data: bytes) -> None:
        room = self.keep - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > self.keep:
                self.dropped += len(self.tail) - self.keep
                del self.tail[:len(self.tail) - self.keep]

    def text(self) -> str:
        middle = f"\n[… {self.dropped} bytes dropped …]\n".encode() if self.dropped else b""
        return (bytes(self.head) + middle + bytes(self.tail)).decode("utf-8", errors="replace")


def worker_env(threads: int = 0) -> dict:
    """The worker's environment: the caller's, without the instructor's solution switch (LORA_DRILL_SOLUTION)."""
    env = {k: v for k, v in os.environ.items() if k != SWAP_VARIABLE and not k.startswith("PYTHON")}
    if threads:  # parallel workers each take all cores by default and then fight over them
        env.setdefault("OMP_NUM_THREADS", str(threads))
    return env


class Run:
    """One worker process: started by `start`, read and ended by `finish`; `cancel()` ends it from another thread."""

    def __init__(self, path: Path, timeout: float, sandbox_kind: str = "none", threads: int = 0):
        self.path, self.timeout, self.kind, self.threads = path, timeout, sandbox_kind, threads
        self.exam = Exam.draw()  # this run's questions: drawn here, where no learner code runs
        self.process: subprocess.Popen | None = None
        self.cancelled = threading.Event()

    def command(self, fd: int) -> list[str]:
        if self.kind == "bwrap":
            inside = f"{sandbox.WORKDIR}/{self.path.name}"
            return sandbox.bwrap_prefix(KIT_ROOT, self.path) + [sys.executable, "-I", "-c", BOOT, KIT_ROOT, inside,
                                                                   str(fd)]
        return [sys.executable, "-I", "-c", BOOT, KIT_ROOT, str(self.path.resolve()), str(fd)]

    def cancel(self) -> None:
        self.cancelled.set()
        if self.process:
            sandbox.kill_group(self.process.pid)

    def execute(self) -> tuple[channel.Reader, Capped, int | None, str]:
        """Run the worker to its end: (the channel's messages, its output, its exit code, why it was stopped)."""
        key = channel.new_key()
        reader, output = channel.Reader(key), Capped()
        r, w = os.pipe()
        cwd = self.path.parent if self.kind == "none" else None
        try:
            self.process = subprocess.Popen(
                self.command(w), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=(w,), start_new_session=True, env=worker_env(self.threads), cwd=cwd)
        finally:
            os.close(w)
        try:
            try:
                self.process.stdin.write(key + json.dumps(self.exam.questions).encode())
                self.process.stdin.close()
            except OSError:
                pass  # the worker is already gone: its report says so
            stop = self._read(r, reader, output)
        finally:
            sandbox.kill_group(self.process.pid)
            os.close(r)
            for stream in (self.process.stdout, self.process.stderr):
                stream.close()
            code = self.process.wait()
        reader.close()
        return reader, output, (None if stop else code), stop

    def _read(self, r: int, reader: channel.Reader, output: Capped) -> str:
        deadline = time.monotonic() + self.timeout
        streams = {r: reader.feed, self.process.stdout.fileno(): output.add, self.process.stderr.fileno(): output.add}
        with selectors.DefaultSelector() as sel:
            for fd in streams:
                sel.register(fd, selectors.EVENT_READ)
            exited_at = None
            while sel.get_map():
                if self.cancelled.is_set():
                    return "interrupted"
                now = time.monotonic()
                if now >= deadline:
                    return "timeout"
                if exited_at is None and self.process.poll() is not None:
                    exited_at = now  # the worker is gone; what it wrote is still in the pipes
                if exited_at is not None and now - exited_at > 1.0:
                    break  # a leftover process holds a pipe open: stop listening to it
                for item, _ in sel.select(timeout=min(0.1, deadline - now)):
                    data = os.read(item.fd, 65536)
                    if data:
                        streams[item.fd](data)
                    else:
                        sel.unregister(item.fd)
        # The pipes close as soon as a cancelled worker is killed: its end is the interruption, not the file's doing.
        return "interrupted" if self.cancelled.is_set() else ""


def check_file(path, timeout: float = 60.0, *, sandbox_kind: str = "none", threads: int = 0, shown=None,
               run: Run | None = None) -> Verdict:
    """Every check on the LoRALinear that `path` (.py or .ipynb) defines, run in a worker process."""
    path = Path(path)
    shown = str(path) if shown is None else shown
    start = time.monotonic()
    if not path.is_file():
        return Verdict(shown, error=Finding(f"{path} does not exist or is not a file", "check the path"))
    if path.suffix not in (".py", ".ipynb"):
        return Verdict(shown, error=Finding(f"{path.name} is neither a .py file nor a notebook (.ipynb)",
                                            "pass the .py file or the notebook that defines LoRALinear"))
    run = run or Run(path, timeout, sandbox_kind, threads)
    index: dict = {}
    indexing = threading.Thread(target=lambda: index.update(_kit_index()), daemon=True)
    indexing.start()  # fingerprinting the kit's sources overlaps the worker's start-up
    preparing = threading.Thread(target=run.exam.prepare, daemon=True)
    preparing.start()  # and so does working out what a correct layer answers
    try:
        reader, output, code, stop = run.execute()
    except OSError as exc:
        return Verdict(shown, error=Finding(f"the check process could not start: {exc}",
                                            "check that this Python can run (and bwrap, with --sandbox bwrap)"))
    indexing.join()
    preparing.join()
    # The kit's own reference file, checked where it lives (the quick start, the latency benchmark), is the kit's
    # by right; a copy of it anywhere else, or in a submission, is judged like any file.
    own = str(path.resolve()).startswith(str(Path(KIT_ROOT, "solution").resolve()) + os.sep)
    verdict = interpret(reader, code, stop, timeout, None if own else index.get("kit"), index.get("checks"),
                        run.exam)
    verdict.path, verdict.output, verdict.dropped = shown, output.text(), output.dropped
    verdict.seconds, verdict.sandbox = time.monotonic() - start, sandbox_kind
    return verdict


def _kit_index() -> dict:
    from checks.provenance import KitIndex, checks_index

    return {"checks": checks_index(KIT_ROOT), "kit": KitIndex(KIT_ROOT)}


# ------------------------------------------------------------------------------------------ the report, judged


NOT_AUTHENTIC = ("the check process's report is not authentic ({}): code in the file wrote to the kit's channel, "
                 "so nothing this run reported can be trusted")


def interpret(reader: channel.Reader, code, stop: str, timeout: float, kit, checks_index=None,
              exam: Exam | None = None) -> Verdict:
    """What the worker's messages, and how it ended, say about the file; with `exam`, checks 1–9 are judged here,
    from the layer's answers to the exam's questions (checks/judge.py), whatever the worker's checks said.

    The messages are signed, but learner code can sign too: a message whose fields are not what the worker sends
    (a number where a list belongs, nesting too deep) makes the report not authentic, never a traceback here."""
    try:
        return _interpret(reader, code, stop, timeout, kit, checks_index, exam)
    except Exception as exc:  # noqa: BLE001  only learner code can put such fields on the channel
        return Verdict("", error=Finding(NOT_AUTHENTIC.format(f"a message's fields could not be read: "
                                                              f"{type(exc).__name__}"), ""))


def _interpret(reader: channel.Reader, code, stop: str, timeout: float, kit, checks_index, exam) -> Verdict:
    from checks.provenance import registry_problem

    v = Verdict("")
    if reader.broken:
        v.error = Finding(NOT_AUTHENTIC.format(reader.broken), "remove code that writes to file descriptors it did "
                                                                "not open, or that replaces the kit's functions")
        return v
    if stop == "interrupted":
        v.interrupted = True
        return v
    messages = list(reader.messages)
    expected: list[tuple[int, str]] = []
    stage, cell, running, hello_rows, answers = "start", None, None, None, []
    for m in messages:
        kind = m.get("kind")
        if stage == "start" and kind == "hello":
            rows = m.get("checks") or []
            problem = registry_problem(rows, KIT_ROOT, checks_index)
            if problem:
                v.error = Finding(f"the checks in the check process are not the kit's: {problem}",
                                  "reinstall the kit (pip install -e .) and run again")
                return v
            expected, hello_rows, stage = [(row[0], row[1]) for row in rows], rows, "loading"
        elif stage == "loading" and kind == "cell":
            cell = f"cell {m.get('number')} (`{m.get('line')}`)"
        elif stage == "loading" and kind == "load_error":
            v.error, stage = Finding(str(m.get("message")), str(m.get("hint"))), "checked"
        elif stage == "loading" and kind == "loaded":
            whose = kit.whose(m.get("classes") or []) if kit else ""
            if whose:
                v.error = Finding(f"LoRALinear is the kit's code, not the learner's: {whose}",
                                  f"write the layer yourself; remove imports of `solution` or `tests`, code copied "
                                  f"from them, and any setting of {SWAP_VARIABLE}")
                return v
            if m.get("stopped"):
                v.stopped = Finding(*map(str, m["stopped"]))
            stage = "checking"
        elif stage == "checking" and kind == "unusable":
            v.error, stage = Finding(f"LoRALinear cannot be used: {m.get('message')}", str(m.get("hint"))), "checked"
        elif stage == "checking" and kind == "start" and running is None:
            want = expected[len(v.results)] if len(v.results) < len(expected) else None
            if want is None or (m.get("id"), m.get("name")) != want:
                v.results, v.error = [], Finding(NOT_AUTHENTIC.format("a check started out of order"), "")
                return v
            running = want
        elif stage == "checking" and kind == "result" and running is not None:
            if (m.get("id"), m.get("name")) != running:
                v.results, v.error = [], Finding(NOT_AUTHENTIC.format("a check's result arrived out of order"), "")
                return v
            v.results.append(Result(int(m["id"]), str(m["name"]), m.get("passed") is True, str(m.get("message")),
                                    str(m.get("hint") or "")))
            running = None
            if len(v.results) == len(expected):
                stage = "checked"
        elif stage == "checked" and kind == "answer" and exam and v.results and m.get("n") == len(answers):
            answers.append(m.get("answer"))
        elif stage == "checked" and kind == "after":
            changed = [str(c) for c in (m.get("changed") or [])]
            if m.get("checks") != hello_rows:
                changed.insert(0, "the check functions' code changed")
            refused = [c for c in changed if c.startswith("refused ")]
            if refused:
                v.results, v.error = [], Finding(
                    f"the file reached into the checking process while it ran ({'; '.join(refused[:3])}), so its "
                    "results cannot be trusted",
                    "a layer needs none of this: remove code that searches memory (gc, ctypes), rewrites the kit's "
                    "functions, or imports or reads the kit's solution/, tests/ or judge")
                return v
            if changed:
                v.results, v.error = [], Finding(
                    f"the file changed the kit while it ran ({'; '.join(changed[:3])}), so its results cannot be "
                    "trusted", "leave the kit's modules (checks.*) and Python's builtins as they are")
                return v
            stage = "after"
        elif stage == "after" and kind == "end":
            stage = "end"
        else:
            v.results, v.error = [], Finding(NOT_AUTHENTIC.format(f"a {kind!r} message came out of order"), "")
            return v
    if stage == "end":
        return judged(v, exam, answers) if exam and v.results else v
    return _unfinished(v, stage, cell, running, code, stop, timeout)


def judged(v: Verdict, exam: Exam, answers: list) -> Verdict:
    """Checks 1–9 as this side judges them from the layer's answers: a check the worker passed fails here when the
    answers show the rule broken (a check the worker failed stays failed, with the worker's fuller message)."""
    if len(answers) < len(exam.questions):
        v.results, v.error = [], Finding(NOT_AUTHENTIC.format(f"it answered {len(answers)} of the kit's "
                                                              f"{len(exam.questions)} questions"), "")
        return v
    ran = [str(f) for a in answers if isinstance(a, dict) and isinstance(a.get("kit_code"), list)
           for f in a["kit_code"]]
    if ran:
        v.results, v.error = [], Finding(
            f"LoRALinear is the kit's code, not the learner's: answering the kit's questions, it ran the kit's own "
            f"{', '.join(dict.fromkeys(ran[:3]))}",
            "write the layer yourself; do not call the kit's checks/ functions from your layer")
        return v
    try:
        found = exam.judge(answers)
    except Exception as exc:  # noqa: BLE001  the worker's own answering code sends nothing this side cannot read
        v.results, v.error = [], Finding(NOT_AUTHENTIC.format(f"an answer could not be read: {type(exc).__name__}"),
                                         "")
        return v
    for i, r in enumerate(v.results):
        f = found.get(r.id)
        if f and r.passed:
            v.results[i] = Result(r.id, r.name, False, f"{f.message} (judged by the kit's own process from the "
                                  "layer's answers to its questions; the file's process had reported a pass)", f.hint)
    return v


def _unfinished(v: Verdict, stage: str, cell, running, code, stop: str, timeout: float) -> Verdict:
    """The worker never sent its end marker: say where it was and why it stopped."""
    why = f"did not finish within {timeout:g} s" if stop == "timeout" else f"ended the process (exit code {code})"
    if stage in ("start", "loading"):
        if stop == "timeout":
            what = f"{cell} was still running" if cell else "the file was still loading"
            v.error = Finding(f"{what} when the {timeout:g} s ran out",
                              "look for a loop that never ends, or slow work that runs when the file is loaded; "
                              "if it is only slow, raise --timeout")
        else:
            what = f"while {cell} ran" if cell else "while the file was loading"
            v.error = Finding(f"the check process ended {what} (exit code {code}) without reporting",
                              "remove calls that end the process (os._exit, sys.exit, exit()); a crash in native "
                              "code or running out of memory also ends it; --verbose shows its output")
    elif stage == "checking" and running:
        v.results.append(Result(*running, False, f"the check {why}: a forward or training step that never "
                                "returns, or code that exits the process",
                                "run your layer once by hand to see where it stops"))
    elif stage == "checking" and not v.results:
        v.error = Finding(f"building LoRALinear(8, 6) and running one forward {why}",
                          "look for a loop that never ends, or code that exits the process")
    else:
        v.results, v.error = [], Finding(f"the check process {why} before its report was complete",
                                         "run the file by hand to see where it stops; --verbose shows its output")
    return v
