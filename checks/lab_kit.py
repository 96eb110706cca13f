"""What every experiment of the "Going further" lab shares: the gate that runs the checks first, the short
table it returns, a quiet progress bar, a lazy pyplot, and a few Adam steps (the paper trains with Adam, §4.2).
"""
from __future__ import annotations

import functools
import warnings
import weakref
from dataclasses import dataclass, field

import torch

from checks.probe import Adam, Mistake, Unusable
from checks.report import CheckFailed

_PASSED = weakref.WeakSet()  # classes that passed every check once: the checks need not run again


def require_passing(cls, why: str = "The lab measures your own LoRALinear", what: str = "The lab cannot measure "
                    "your LoRALinear yet") -> None:
    """Raise CheckFailed unless every check passes: a lab number measured on a broken layer would mislead.
    `why` opens the message when a check fails; `what`, when the layer cannot be used at all."""
    if cls in _PASSED:
        return
    from checks.runner import evaluate

    try:
        results = evaluate(cls)
    except Unusable as u:
        raise CheckFailed(f"{what}: {u.message}" + (f"\n    hint: {u.hint}" if u.hint else "")) from None
    failed = [r for r in results if not r.passed]
    if failed:
        lines = "\n".join(r.line() for r in failed)
        raise CheckFailed(f"{why}, so every check must pass first. "
                          f"{len(failed)} of {len(results)} fail:\n{lines}\nFix them in Part 3, run "
                          "checks.run_all(LoRALinear), then this cell again.", tuple(results))
    _PASSED.add(cls)


def experiment(fn):
    """Gate `fn(cls, ...)` on the checks, seed it, leave the notebook's RNG as it was, and turn a Mistake from
    the learner's layer into a one-paragraph CheckFailed."""
    @functools.wraps(fn)
    def run(cls, *args, **kwargs):
        require_passing(cls)
        threads = torch.get_num_threads()
        # The lab's models are tiny: a second thread only adds waiting, and on a busy machine a great deal of it
        # (a training loop measured here ran 40× slower on two threads than on one while other jobs ran).
        torch.set_num_threads(1)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                return fn(cls, *args, **kwargs)
        except Mistake as m:
            raise CheckFailed(f"lab.{fn.__name__}: {m.message}" + (f"\n    hint: {m.hint}" if m.hint else "")) from None
        finally:
            torch.set_num_threads(threads)
    return run


@dataclass(repr=False)
class Report:
    """A short table (the notebook shows it as the cell's value) and the numbers behind it, for tests."""

    title: str
    header: tuple
    rows: list
    notes: list = field(default_factory=list)
    values: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        cells = [[str(c) for c in self.header]] + [[str(c) for c in row] for row in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.header))]
        lines = [self.title] + ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
        lines.insert(2, "  ".join("-" * w for w in widths))
        return "\n".join(lines + self.notes)


def progress(items, desc: str):
    """A progress bar that shows only once a loop has run for a second (tqdm's `delay`), and clears itself."""
    with warnings.catch_warnings():  # without ipywidgets tqdm.auto warns once and falls back to a text bar
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm
    return tqdm(items, desc=desc, leave=False, delay=1.0)


def pyplot():
    """matplotlib.pyplot, imported only when a plot is drawn: `import checks` stays fast."""
    import matplotlib.pyplot as plt

    return plt


def fit(params, loss_fn, steps: int, lr: float, desc: str = "training") -> list[float]:
    """`steps` Adam steps on `loss_fn()`, with a progress bar; the losses, one per step."""
    opt = Adam(params, lr=lr)
    losses = []
    for _ in progress(range(steps), desc):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def si(n: float, unit: str = "", digits: int = 1) -> str:
    """4_718_592 → '4.7M', (37_748_736, "B") → '37.7 MB': decimal prefixes, as the paper writes its numbers."""
    space = " " if unit else ""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= factor:
            return f"{n / factor:.{digits}f}{space}{prefix}{unit}"
    return f"{n:.0f}{space}{unit}"
