"""Runs the checks in this process against a class, for the notebook and for the command line's worker."""
from __future__ import annotations

import contextlib

import torch

from checks.probe import Mistake, Unusable, describe, smoke
from checks.report import CheckFailed, Result, table
from checks.sanity import CHECKS


def _smoke(cls) -> None:
    with torch.random.fork_rng(devices=[]):
        smoke(cls)


@contextlib.contextmanager
def one_thread():
    """The checks' tensors are tiny: a second thread only adds contention on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_one(number: int, cls, **given) -> Result:
    """Run check `number` on `cls` and say what it found; the global RNG state is left as it was.

    `given` goes to the check itself (check 3 takes the notebook's trained layer and its snapshot)."""
    name, fn = CHECKS[number]
    return run_entry(number, name, fn, cls, **given)


def registry() -> list[tuple]:
    """The checks as (id, name, function), in order: a copy, so later changes to CHECKS do not reach it."""
    return [(number, name, fn) for number, (name, fn) in CHECKS.items()]


def run_entry(number: int, name: str, fn, cls, **given) -> Result:
    """Run one check function on `cls`: seeded by its id, on one thread, any error turned into a failed Result."""
    with one_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(number)
        try:
            return Result(number, name, True, fn(cls, **given))
        except Unusable:
            raise
        except Mistake as m:
            return Result(number, name, False, m.message, m.hint)
        except (Exception, SystemExit) as exc:  # learner code failing where no check foresaw
            return Result(number, name, False, f"your layer raised {describe(exc)}")


def iter_results(cls, checks=None, on_start=None):
    """The one loop that runs the checks: build and run the layer once (raises Unusable if that fails), then
    yield each check's Result in order. `checks` is a registry() copy (the live registry when None);
    `on_start(id, name)` is called as each check begins."""
    checks = registry() if checks is None else checks
    _smoke(cls)
    for number, name, fn in checks:
        if on_start:
            on_start(number, name)
        yield run_entry(number, name, fn, cls)


def evaluate(cls) -> list[Result]:
    """Every check in order; raises Unusable when the layer cannot even be built and run once."""
    return list(iter_results(cls))


def _unusable_text(u: Unusable) -> str:
    return f"LoRALinear cannot be used yet: {u.message}" + (f"\n    hint: {u.hint}" if u.hint else "")


def check(number: int, LoRALinear, **given) -> None:
    """Notebook view of one check: prints ✓ and the finding, or raises CheckFailed with message and hint."""
    try:
        _smoke(LoRALinear)
    except Unusable as u:
        raise CheckFailed(_unusable_text(u)) from None
    result = run_one(number, LoRALinear, **given)
    if not result.passed:
        raise CheckFailed(result.line(), (result,))
    print(result.line())


def run_all(LoRALinear) -> None:
    """Notebook view of every check: prints the table, and raises CheckFailed if any check failed."""
    try:
        results = evaluate(LoRALinear)
    except Unusable as u:
        raise CheckFailed(_unusable_text(u)) from None
    text = table(results)
    if not all(r.passed for r in results):
        raise CheckFailed("\n" + text, tuple(results))
    print(text)
