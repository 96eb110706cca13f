"""The worker: loads a learner's file and runs the checks, in a child process the command line starts.

It writes one JSON object per line to the events file it is given, as it goes, so the parent can tell how far
it got if the learner's code hangs or kills the process:
  {"event": "loaded"} · {"event": "start", "id", "name"} · {"event": "result", id, name, passed, message, hint}
  {"event": "load_error" | "unusable", "message", "hint"} · {"event": "done"}
"""
from __future__ import annotations

import contextlib
import json
import sys
import traceback
from dataclasses import asdict

# Import every check before any learner code runs, so the functions they bound cannot be patched under them.
from checks.loading import LoadError, load_class
from checks.probe import Unusable, smoke
from checks.runner import run_one
from checks.sanity import CHECKS


@contextlib.contextmanager
def events_to(path):
    """An `emit(event, **fields)` that appends one JSON line to `path` and flushes it at once."""
    with open(path, "a", encoding="utf-8") as out:
        def emit(event, **fields):
            out.write(json.dumps({"event": event, **fields}) + "\n")
            out.flush()
        yield emit


def emit_checks(cls, emit) -> None:
    """Build and run the class once, then every check in turn, each announced before it starts."""
    try:
        smoke(cls)
    except Unusable as exc:
        traceback.print_exception(exc.__cause__ or exc)  # stderr: shown only with --verbose
        emit("unusable", message=exc.message, hint=exc.hint)
        return
    for number, (name, _) in CHECKS.items():
        emit("start", id=number, name=name)
        emit("result", **asdict(run_one(number, cls)))
    emit("done")


def main(argv=None) -> int:
    path, events = argv if argv is not None else sys.argv[1:]
    with events_to(events) as emit:
        try:
            cls = load_class(path)
        except LoadError as exc:
            traceback.print_exception(exc.__cause__ or exc)
            emit("load_error", message=exc.message, hint=exc.hint)
            return 0
        emit("loaded")
        emit_checks(cls, emit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
