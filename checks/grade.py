"""Grade a cohort: each file, from a private snapshot, checked by its own worker process, sandboxed by bubblewrap
when it can run; `jobs` files at a time; Ctrl-C stops every worker and keeps the verdicts already reached.

A notebook is judged exactly as `python -m checks NOTEBOOK` judges it (checks/loading.py, checks/isolated.py):
one engine, no kernel. Which files: checks/collect.py; the sandbox: checks/sandbox.py; the reports:
checks/report.py. This side never imports torch.
"""
from __future__ import annotations

import os
import shutil
import signal
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from checks import sandbox
from checks.collect import snapshot
from checks.isolated import Run, check_file
from checks.verdict import Finding, Verdict


class Cohort:
    """Grades files in parallel threads (each waits on its worker process); `interrupt()` stops them all."""

    def __init__(self, timeout: float, jobs: int, sandbox_kind: str):
        self.timeout, self.jobs, self.kind = timeout, jobs, sandbox_kind
        self.threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0
        self.runs: set[Run] = set()
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def grade_one(self, original: Path, copy: Path | None) -> Verdict:
        if self.stopping.is_set():
            return Verdict(str(original), interrupted=True, sandbox=self.kind)
        if copy is None:
            return Verdict(str(original), error=Finding(f"{original} could not be read", "check its permissions"),
                           sandbox=self.kind)
        run = Run(copy, self.timeout, self.kind, self.threads)
        with self.lock:
            self.runs.add(run)
        try:
            if self.stopping.is_set():
                run.cancel()
            return check_file(copy, self.timeout, sandbox_kind=self.kind, shown=str(original), run=run)
        except Exception as exc:  # a kit bug lands on this file, and the others still get graded
            return Verdict(str(original), error=Finding(f"grading {original.name} failed: {type(exc).__name__}: "
                                                        f"{exc}", "report this to the kit's maintainers"),
                           sandbox=self.kind)
        finally:
            with self.lock:
                self.runs.discard(run)

    def interrupt(self) -> None:
        self.stopping.set()
        with self.lock:
            for run in list(self.runs):
                run.cancel()


def grade_all(files, timeout: float, jobs: int, sandbox_kind: str = "none", on_done=None) -> tuple[list, bool]:
    """Every file's verdict, in the order of `files`, and whether grading was interrupted (Ctrl-C).

    Files are copied to a private snapshot before any runs; after the last worker has ended, every process a
    submission left behind is killed, so the caller can write reports no submission can touch."""
    sandbox.become_subreaper()
    folder, copies = snapshot(list(files))
    cohort = Cohort(timeout, jobs, sandbox_kind)
    interrupted = False
    verdicts: list[Verdict | None] = [None] * len(files)
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        futures = {pool.submit(cohort.grade_one, f, c): i for i, (f, c) in enumerate(zip(files, copies))}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for future in done:
                    verdicts[futures[future]] = future.result()
                    if on_done:
                        on_done(future.result())
        except KeyboardInterrupt:
            interrupted = True
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cost the reports
            cohort.interrupt()
            for future, i in futures.items():
                if verdicts[i] is None:
                    verdicts[i] = future.result() if not future.cancel() else None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        sandbox.sweep()
        shutil.rmtree(folder, ignore_errors=True)
    out = [v if v is not None else Verdict(str(f), interrupted=True, sandbox=sandbox_kind)
           for v, f in zip(verdicts, files)]
    return out, interrupted
