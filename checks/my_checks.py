"""The learner's own sanity checks, scored: run them against the kit's catalogue of named broken layers and its
correct variants (checks/catalogue.py), both derived from the learner's own LoRALinear once it passes the kit's
checks, and report what each check caught, what no check caught, and every false alarm.

In the notebook: `mine = checks.test_my_checks(my_check_1, my_check_2, base=LoRALinear)`. A check is a function
that takes a class and raises (an `assert` will do) when it finds a problem.
"""
from __future__ import annotations

import contextlib
import html
import io
import warnings
from dataclasses import dataclass, field

import torch

from checks.catalogue import Entry, mistakes, variants
from checks.lab_kit import require_passing
from checks.report import CheckFailed

_WRITE_FIRST = "Write your checks in place of the NotImplementedError lines above, then run the cell again."
YOURS = "YourLoRALinear"  # the learner's own class, the first correct layer every check must accept


@dataclass(repr=False)
class MyChecks:
    """What the learner's checks found. `caught`, `missed` and `false_alarms` are lists of catalogue names."""

    written: list  # the checks that ran (a check that raises NotImplementedError on your own layer is unwritten)
    unwritten: list
    caught: list  # mistakes at least one check flagged, in catalogue order
    missed: list  # mistakes no check flagged
    false_alarms: list  # correct layers at least one check flagged (YourLoRALinear is your own class)
    by_check: dict  # check name -> {"caught": [...], "false_alarms": [...]}
    mistakes: list = field(default_factory=list)  # the catalogue's Entry objects, for the table
    alarms: dict = field(default_factory=dict)  # (check, correct layer) -> what the check raised
    blocked: str = ""  # why nothing was scored: your layer fails the kit's checks (their lines follow)
    on_yours: dict = field(default_factory=dict)  # check -> what it raised on your own layer, or None

    def _caught_by(self, name: str) -> list:
        return [check for check, found in self.by_check.items() if name in found["caught"]]

    def _blocked_text(self) -> str:
        flagged = [f"{name} raised on your layer: {message}" for name, message in self.on_yours.items() if message]
        quiet = [name for name, message in self.on_yours.items() if not message]
        return "\n".join([self.blocked] + flagged + ([f"{', '.join(quiet)}: passed your layer, which the kit's "
                                                       "checks fail: what do they miss?"] if quiet else []))

    def _score(self) -> str:
        total = len(self.caught) + len(self.missed)
        text = (f"Your {len(self.written)} check(s) caught {len(self.caught)} of {total} named mistakes; "
                f"{len(self.false_alarms)} false alarm(s) on correct layers.")
        if self.unwritten:
            text += f" Not written yet: {', '.join(self.unwritten)}."
        if self.false_alarms:
            text += (" A check that complains about a correct layer tests something the contract does not ask "
                     "for: loosen it, then run this cell again.")
        return text

    def __repr__(self) -> str:
        if self.blocked:
            return "Your checks against the kit's catalogue: not scored\n" + self._blocked_text()
        lines = ["Your checks against the kit's catalogue", self._score()]
        if not self.written:
            return "\n".join(lines + [_WRITE_FIRST])
        lines.append("")
        width = max([len("check")] + [len(name) for name in self.by_check])
        lines.append(f"{'check'.ljust(width)}  caught  false alarms")
        for name, found in self.by_check.items():
            lines.append(f"{name.ljust(width)}  {len(found['caught']):>6}  {len(found['false_alarms']):>12}")
        for (check, layer), message in self.alarms.items():
            lines.append(f"false alarm: {check} raised on {layer}: {message}")
        lines.append("")
        width = max(len(e.name) for e in self.mistakes) if self.mistakes else 7
        lines.append(f"{'mistake'.ljust(width)}  kit check  caught by")
        for e in self.mistakes:
            by = ", ".join(self._caught_by(e.name)) or "—"
            lines.append(f"{e.name.ljust(width)}  {e.check:>9}  {by}   ({e.what})")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        esc = html.escape
        if self.blocked:
            return ("<b>Your checks against the kit's catalogue: not scored</b><pre>"
                    f"{esc(self._blocked_text())}</pre>")
        if not self.written:
            return f"<b>Your checks against the kit's catalogue</b><p>{esc(self._score())}</p><p>{esc(_WRITE_FIRST)}</p>"
        checks = "".join(f"<tr><td style='text-align:left'><code>{esc(n)}</code></td><td>{len(f['caught'])}</td>"
                         f"<td>{len(f['false_alarms'])}</td></tr>" for n, f in self.by_check.items())
        alarms = "".join(f"<li><code>{esc(c)}</code> raised on <code>{esc(layer)}</code>: {esc(m)}</li>"
                         for (c, layer), m in self.alarms.items())
        rows = "".join(
            f"<tr><td style='text-align:left'><code>{esc(e.name)}</code></td><td>{e.check}</td>"
            f"<td style='text-align:left'>{esc(e.what)}</td>"
            f"<td style='text-align:left'>{esc(', '.join(self._caught_by(e.name)) or '—')}</td></tr>"
            for e in self.mistakes)
        return (f"<b>Your checks against the kit's catalogue</b><p>{esc(self._score())}</p>"
                f"<table><tr><th>check</th><th>caught</th><th>false alarms</th></tr>{checks}</table>"
                + (f"<ul>{alarms}</ul>" if alarms else "")
                + "<table><tr><th>mistake</th><th>kit check</th><th>what it does</th><th>caught by</th></tr>"
                f"{rows}</table>")


def _names(fns) -> list[str]:
    """Each check's function name, numbered when two share one (lambdas all do)."""
    names = []
    for fn in fns:
        name = getattr(fn, "__name__", repr(fn))
        names.append(name if name not in names else f"{name} #{sum(n.split(' #')[0] == name for n in names) + 1}")
    return names


def _raised(fn, cls) -> BaseException | None:
    """What `fn(cls)` raised, or None. The check's prints are swallowed and its RNG use seeded and undone, so one
    check cannot change what the next one sees."""
    with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        try:
            fn(cls)
        except (Exception, SystemExit) as exc:
            return exc
    return None


def _text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


def test_my_checks(*fns, base) -> MyChecks:
    """Run each check `fn(cls)` on every named mistake and every correct variant derived from `base` (your
    LoRALinear) and on `base` itself; a check "catches" a mistake when it raises on it, and raises a false alarm
    when it raises on a correct layer. A check that raises NotImplementedError on your own layer counts as not
    written yet. The catalogue needs a `base` that passes the kit's checks: until it does, nothing is scored
    (`blocked` says which kit checks fail) and `on_yours` says what your checks made of your layer."""
    if not fns:
        raise ValueError("pass your checks: checks.test_my_checks(my_check_1, my_check_2, base=LoRALinear)")
    for fn in fns:
        if not callable(fn):
            raise TypeError(f"{fn!r} is not a function: each check is a function that takes the class and raises "
                            "on a problem")
    names = _names(fns)
    try:
        require_passing(base, why="Your checks are scored on broken layers derived from your own LoRALinear",
                        what="Your checks cannot be scored yet: your LoRALinear cannot be used")
    except CheckFailed as failed:  # no catalogue from a broken layer; say what your checks make of it instead
        on_yours = {name: _raised(fn, base) for name, fn in zip(names, fns)}
        written = [n for n, exc in on_yours.items() if not isinstance(exc, NotImplementedError)]
        return MyChecks(written=written, unwritten=[n for n in names if n not in written], caught=[], missed=[],
                        false_alarms=[], by_check={}, blocked=str(failed),
                        on_yours={n: _text(on_yours[n]) if on_yours[n] else None for n in written})
    wrong, right = mistakes(base), [Entry(YOURS, 0, base, "your LoRALinear as written")] + variants(base)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the layers are tiny: a second thread only adds waiting on a busy machine
    unwritten, by_check, alarms = [], {}, {}
    try:
        for name, fn in zip(names, fns):
            on_right = {e.name: _raised(fn, e.cls) for e in right}
            if isinstance(on_right[YOURS], NotImplementedError):
                unwritten.append(name)
                continue
            by_check[name] = {"caught": [e.name for e in wrong if _raised(fn, e.cls) is not None],
                              "false_alarms": [n for n, exc in on_right.items() if exc is not None]}
            alarms.update({(name, n): _text(exc) for n, exc in on_right.items() if exc is not None})
    finally:
        torch.set_num_threads(before)
    caught = [e.name for e in wrong if any(e.name in f["caught"] for f in by_check.values())]
    return MyChecks(written=list(by_check), unwritten=unwritten, caught=caught,
                    missed=[e.name for e in wrong if e.name not in caught],
                    false_alarms=[e.name for e in right if any(e.name in f["false_alarms"] for f in by_check.values())],
                    by_check=by_check, mistakes=wrong, alarms=alarms,
                    on_yours={n: alarms.get((n, YOURS)) for n in by_check})


test_my_checks.__test__ = False  # a scorer, not a test: pytest must not collect it where it is imported
