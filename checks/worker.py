"""The worker: runs a learner's file and the checks on its LoRALinear, in a child process, and reports to the parent.

Started by checks/isolated.py as `python -I -c ... KIT_ROOT FILE FD` with the run's key on stdin. In this order,
before any learner code runs, it: reads the key and closes stdin; imports every module of the kit that a check run
uses, from KIT_ROOT; copies the check registry and takes a snapshot of the kit's modules; and sends `hello` with
the fingerprint of every check function. Then it loads the file and sends, over the signed channel (checks/channel.py):

  hello {checks: [[id, name, qualname, file, fingerprint]...]}
  cell {number, line}            before each notebook cell, so a hang or a crash is pinned to its cell
  loaded {classes, stopped?}     the class's methods described for the provenance check (checks/provenance.py)
  | load_error {message, hint}
  unusable {message, hint}       the layer cannot be built and run once
  | start {id, name}, result {id, name, passed, message, hint}   per check, in the registry's order
  answer {n, answer}             per question of the parent's exam, in order: what the layer did (checks/answers.py)
  after {checks, changed}        the registry again, and what of the kit changed while learner code ran
  end

The parent accepts nothing else, in no other order. Learner code runs in this process, so it could read the key
from memory: that is why the parent judges checks 1–9 itself from the answers (checks/judge.py), and why
README.md's threat model says what this does and does not defend against.
"""
from __future__ import annotations

import os
import sys

from checks.verdict import cut


def main(argv) -> None:
    given = sys.stdin.buffer.read()  # the run's key, then the trusted side's questions (checks/judge.py)
    sys.stdin.close()
    sys.stdin = open(os.devnull)  # learner code that reads input() gets an empty line, not the key
    kit_root, path, fd = argv[0], argv[1], int(argv[2])
    # The kit comes from the root the parent named, before anything the learner's folder could put on the path.
    sys.path[:] = [kit_root] + [p for p in sys.path if p not in ("", ".", os.getcwd())]

    import builtins
    import json
    import traceback

    import torch

    import checks

    try:  # a notebook may import the lab; it must be the kit's own, imported before learner code runs
        import checks.lab  # noqa: F401
    except Exception:  # noqa: BLE001  the lab is not needed for the verdict; a notebook that needs it says so
        pass
    from checks import guard, loading, notebook, provenance, runner  # noqa: F401
    from checks.answers import answer
    from checks.channel import KEY_BYTES, Writer
    from checks.probe import Unusable, describe

    for name in checks.__all__:  # resolve the lazy names now, so the snapshot below holds them all
        getattr(checks, name)
    send = Writer(fd, given[:KEY_BYTES]).send
    questions = json.loads(given[KEY_BYTES:] or b"[]")
    del given
    registry = runner.registry()
    fingerprints = provenance.describe_checks(registry)
    changes = Snapshot(builtins).changes  # bound now: a later change to the class does not reach it
    iter_results, load, LoadError = runner.iter_results, loading.load, loading.LoadError
    describe_class, describe_checks = provenance.describe_class, provenance.describe_checks
    send("hello", checks=fingerprints)
    watch = guard.install(kit_root, path)  # from here on learner code runs: see checks/guard.py

    def after_and_end():
        refused = [f"refused {why}" for why in dict.fromkeys(watch.refused)]
        send("after", checks=describe_checks(registry), changed=refused + changes(registry))
        send("end")

    try:
        cls, stopped = load(path, before_cell=lambda c: send("cell", number=c.number, line=c.first_line))
    except LoadError as exc:
        traceback.print_exception(exc.__cause__ or exc)  # stderr: shown only with --verbose
        send("load_error", message=cut(exc.finding.message), hint=cut(exc.finding.hint))
        after_and_end()
        return
    with watch.reading_sources():
        described = describe_class(cls, skip=(torch.nn.Module,))
    send("loaded", classes=described,
         stopped=[cut(stopped.message), cut(stopped.hint)] if stopped else None)
    try:
        for result in iter_results(cls, registry, on_start=lambda n, name: send("start", id=n, name=name)):
            send("result", id=result.id, name=result.name, passed=bool(result.passed), message=cut(result.message),
                 hint=cut(result.hint))
        for n, question in enumerate(questions):  # what the layer does on the trusted side's own inputs
            send("answer", n=n, answer=answer(cls, question, guard=watch))
    except Unusable as exc:
        traceback.print_exception(exc.__cause__ or exc)
        send("unusable", message=cut(exc.message), hint=cut(exc.hint))
    except SystemExit as exc:
        send("unusable", message=f"building LoRALinear(8, 6) and running one forward called sys.exit({exc.code!r})",
             hint="remove calls that end the process (sys.exit, exit()) from the layer")
    except Exception as exc:  # a learner error where no check foresaw one, outside any check
        send("unusable", message=cut(f"LoRALinear raised {describe(exc)}"), hint="run your layer once by hand")
    after_and_end()


class Snapshot:
    """The kit's modules as they were before learner code ran: which objects each module's names were bound to,
    each function's code and defaults, and the classes' attributes. `changes()` lists what differs now."""

    def __init__(self, builtins_module):
        self.modules = {name: (m, dict(vars(m))) for name, m in list(sys.modules.items())
                        if name == "checks" or name.startswith("checks.")}
        self.functions, self.classes = [], []
        for name, (_module, names) in self.modules.items():
            for attr, value in names.items():
                if getattr(value, "__module__", None) != name:
                    continue
                if hasattr(value, "__code__"):
                    self.functions.append((f"{name}.{attr}", value, value.__code__, value.__defaults__,
                                           value.__kwdefaults__))
                elif isinstance(value, type):
                    self.classes.append((f"{name}.{attr}", value, dict(vars(value))))
        self.path = list(sys.modules["checks"].__path__)
        self.builtins = (builtins_module, dict(vars(builtins_module)))

    def changes(self, registry) -> list[str]:
        changed = []
        for name, (module, names) in self.modules.items():
            if sys.modules.get(name) is not module:
                changed.append(f"sys.modules[{name!r}] was replaced or removed")
            now = vars(module)
            for attr, value in names.items():
                if attr != "__warningregistry__" and now.get(attr, _MISSING) is not value:
                    changed.append(f"{name}.{attr} was replaced")
            for attr in now.keys() - names.keys():
                value = now[attr]
                submodule = getattr(value, "__name__", None) == f"{name}.{attr}" and \
                    sys.modules.get(f"{name}.{attr}") is value
                if attr != "__warningregistry__" and not submodule:
                    changed.append(f"{name}.{attr} was added")
        for where, fn, code, defaults, kwdefaults in self.functions:
            if fn.__code__ is not code or fn.__defaults__ is not defaults or fn.__kwdefaults__ is not kwdefaults:
                changed.append(f"the code of {where} was replaced")
        for where, klass, attrs in self.classes:
            now = vars(klass)
            added = [k for k in now.keys() - attrs.keys() if not (k.startswith("__") and k.endswith("__"))]
            if any(now.get(k, _MISSING) is not v for k, v in attrs.items() if k != "__slotnames__") or added:
                changed.append(f"the class {where} was changed")
        if list(sys.modules["checks"].__path__) != self.path:
            changed.append("checks.__path__ was changed")
        live = sys.modules["checks.sanity"].CHECKS
        if [(n, name, fn) for n, (name, fn) in live.items()] != registry or \
                any(live[n][1] is not fn for n, _, fn in registry if n in live):
            changed.append("checks.sanity.CHECKS was changed")
        module, names = self.builtins
        if any(vars(module).get(k, _MISSING) is not v for k, v in names.items()):
            changed.append("a builtin (isinstance, len, …) was replaced")
        return changed[:20]


_MISSING = object()


def run(argv) -> None:
    """The worker's entry point: main(), then out at once, so no learner atexit handler or finalizer runs after."""
    code = 0
    try:
        main(argv)
    except BaseException:  # a kit error, or learner code that broke the worker itself: said on stderr
        import traceback

        traceback.print_exc()  # the parent shows it with --verbose
        code = 70
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a learner may have replaced or closed them
            pass
    os._exit(code)
