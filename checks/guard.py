"""The worker's guard: while learner code runs, refuse the few interpreter operations that reach into the checker.

Learner code runs in the process that checks it, so Python's introspection is open to it. A Python audit hook
(PEP 578), which cannot be removed once added, refuses and records what a layer never needs and a forged verdict
does: searching the process's memory (gc.get_objects and its kin, ctypes), rewriting the code of the kit's
functions, setting a profiler or tracer while the layer answers (which would blind the kit's own watch,
checks/answers.py) or an audit hook of its own, and importing or reading the kit's reference solution, its tests, or its judge (checks/judge.py, which
works out what a correct layer answers the parent's questions and which the worker never needs). A refused
operation raises PermissionError where it was attempted, and the worker reports every refusal; the parent fails
the file.

What it does not stop, README.md's threat model says: a layer that behaves only while it sees the checks, frame
walking (inspect.currentframe().f_back...) to the worker's own variables, and a child process (which has no
guard: under bwrap it finds neither solution/, tests/ nor the judge).
"""
from __future__ import annotations

import contextlib
import os
import sys

_MEMORY = ("gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames")
_HIDDEN = ("solution", "tests")  # top-level packages of the kit that a learner's code has no business loading
_HIDDEN_MODULES = ("checks.judge",)  # and modules of checks/ that the worker never loads


def hidden_files(kit_root: str) -> list[str]:
    """The files of the hidden modules of checks/, sources and compiled, as they are on disk now."""
    checks_dir = os.path.join(os.path.realpath(kit_root), "checks")
    found = []
    for module in _HIDDEN_MODULES:
        stem = module.rpartition(".")[2]
        found.append(os.path.join(checks_dir, stem + ".py"))
        cache = os.path.join(checks_dir, "__pycache__")
        if os.path.isdir(cache):
            found += sorted(os.path.join(cache, n) for n in os.listdir(cache) if n.startswith(stem + "."))
    return found


class Guard:
    def __init__(self, kit_root: str, learner_file: str):
        root = os.path.realpath(kit_root)
        self.hidden_dirs = tuple(os.path.join(root, d) + os.sep for d in _HIDDEN)
        self.hidden_stems = tuple(os.path.join(root, "checks", m.rpartition(".")[2]) + "." for m in _HIDDEN_MODULES)
        self.hidden_stems += tuple(os.path.join(root, "checks", "__pycache__", m.rpartition(".")[2]) + "."
                                   for m in _HIDDEN_MODULES)
        self.learner_file = os.path.realpath(learner_file)
        self.refused: list[str] = []
        self.kit_io = False  # set while the kit itself reads sources (provenance), never while learner code runs
        self.kit_hooks = False  # set while the kit itself sets its profile function (checks/answers.py)
        self.answering = False  # set while the layer answers the parent's questions under the kit's profile watch

    def __call__(self, event: str, args: tuple) -> None:
        why = self._why(event, args)
        if why:
            self.refused.append(why)
            raise PermissionError(f"lora-drill refused this while checking your layer: {why}")

    def _why(self, event: str, args: tuple) -> str:
        if event in _MEMORY:
            return f"{event}(), a search of the checking process's memory"
        if event.startswith("ctypes."):
            return f"{event}, raw access to the checking process's memory"
        if event in ("sys.setprofile", "sys.settrace") and self.answering and not self.kit_hooks:
            return f"{event}() while the layer answered, which would blind the kit's watch on what runs inside it"
        if event == "sys.addaudithook":
            return "sys.addaudithook(), a hook of the file's own (the kit's watch pauses inside audit hooks)"
        if event == "object.__setattr__" and len(args) > 1 and args[1] == "__code__":
            module = getattr(args[0], "__module__", "") or ""
            if module == "checks" or module.startswith("checks."):
                return f"replacing the code of the kit's {getattr(args[0], '__qualname__', '?')}"
            return ""
        if event == "import" and args and isinstance(args[0], str):
            top = args[0].split(".")[0]
            hidden = top in _HIDDEN or any(args[0] == m or args[0].startswith(m + ".") for m in _HIDDEN_MODULES)
            return f"importing {args[0]!r}, the kit's own code" if hidden else ""
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)) and not self.kit_io:
            path = os.path.realpath(os.fsdecode(args[0]))
            if path != self.learner_file and (path.startswith(self.hidden_dirs) or path.startswith(self.hidden_stems)):
                return f"reading {path}, the kit's own code"
        return ""

    @contextlib.contextmanager
    def _while(self, flag: str):
        setattr(self, flag, True)
        try:
            yield
        finally:
            setattr(self, flag, False)

    def setting_hooks(self):
        """The kit sets and clears its own profile function (checks/answers.py): allowed, and only then."""
        return self._while("kit_hooks")

    def watching(self):
        """While the layer answers under the kit's profile watch: no one else may set a profiler or tracer."""
        return self._while("answering")

    def reading_sources(self):
        """The kit reads source files itself (provenance): allowed, and only then."""
        return self._while("kit_io")


def install(kit_root: str, learner_file: str) -> Guard:
    """Add the guard as an audit hook for the rest of this process's life, and return it."""
    guard = Guard(kit_root, learner_file)
    sys.addaudithook(guard)
    return guard
