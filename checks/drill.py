"""The drill's furniture: the instructor's solution swap, the drill clock (the 60-minute plan), the toy run's
verdict and the closing summary of what the kit can measure of the rubric.

Nothing here imports torch at import time: `checks.DrillClock` stays cheap.
"""
from __future__ import annotations

import html
import math
import os
import time
from dataclasses import dataclass

SWAP_VARIABLE = "LORA_DRILL_SOLUTION"

# The four blocks of the 60-minute drill, in order, with their budgets in minutes. Why these times: Read keeps the
# three passes' 15 (3 + 8 + 4) and ends with the learner writing the core equation; Explain gets two minutes for
# each of its five questions; Implement is about ten lines against a contract that names every shape; Sanity-check
# holds the learner's own two checks (about 5 min) and the kit's eleven, each said out loud (about 10 min).
BLOCKS = (("Read", 15), ("Explain", 10), ("Implement", 20), ("Sanity-check", 15))

# The toy run (the notebook's Part 3): the target is reachable at rank r, so the loss should end far below this.
TOY_TARGET = 0.05  # end below 5% of the start: learned
TOY_STALLED = 0.25  # end above a quarter of the start: stalled (check 9's bar)


def swap_in(LoRALinear):
    """The class the notebook should use: the reference solution when LORA_DRILL_SOLUTION=1, else the learner's."""
    if os.environ.get(SWAP_VARIABLE, "") not in ("", "0"):
        from solution import LoRALinear as reference
        print(f"{SWAP_VARIABLE} is set: using the reference solution in place of the stub above.")
        return reference
    return LoRALinear


def _mmss(seconds: float) -> str:
    return f"{int(seconds) // 60:02d}:{int(seconds) % 60:02d}"


@dataclass(frozen=True)
class Lap:
    """One finished block: its name, its budget in minutes and the seconds it took."""

    block: str
    budget_min: int
    seconds: float

    @property
    def on_time(self) -> bool:
        return self.seconds <= self.budget_min * 60

    def line(self) -> str:
        verdict = "on time" if self.on_time else f"over by {_mmss(self.seconds - self.budget_min * 60)}"
        return f"{self.block}: {_mmss(self.seconds)} of {self.budget_min:02d}:00, {verdict}."


class DrillClock:
    """Start once; call lap() at the end of each block to see the time used against that block's budget.

    Every lap is kept in `laps` (a list of Lap; `clock.laps[-1].seconds` is the last block's time)."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._last = self._start = clock()
        self.laps: list[Lap] = []
        print(f"Clock started. First block: {BLOCKS[0][0]} ({BLOCKS[0][1]} min). Call clock.lap() when it is done.")

    @property
    def total(self) -> float:
        """Seconds from the start to the last lap."""
        return sum(lap.seconds for lap in self.laps)

    def lap(self) -> None:
        """End the current block and print its time against its budget and the drill's total (kept in `laps`)."""
        if len(self.laps) >= len(BLOCKS):
            print("All four blocks are done; start a new clock to drill again.")
            return
        now = self._clock()
        used, self._last = now - self._last, now
        self.laps.append(Lap(*BLOCKS[len(self.laps)], used))
        following = (f" Next: {BLOCKS[len(self.laps)][0]} ({BLOCKS[len(self.laps)][1]} min)."
                     if len(self.laps) < len(BLOCKS) else " Drill complete.")
        print(f"{self.laps[-1].line()} Total {_mmss(now - self._start)} of 60:00.{following}")


@dataclass(frozen=True)
class ToyVerdict:
    """What the toy run's losses say: `status` is "learned", "slow", "stalled" or "nan"; the text says why."""

    status: str
    text: str

    def __repr__(self) -> str:
        return self.text


_NAN_CAUSES = ("the update is scaled too much (α instead of α/r: check 7 names it); "
               "the learning rate is too high for this step rule (the kit's Adam at lr 3e-2 takes any correct init); "
               "A starts large, e.g. N(0, 1), under plain gradient descent, whose step grows with A's size")
_STALL_CAUSES = ("A and B both start at zero, so neither gets a gradient (check 8); "
                 "the low-rank path is detached or computed under torch.no_grad() (check 6); "
                 "A or B is not an nn.Parameter, or is frozen, so the optimizer never moves it (check 1); "
                 "forward ignores A or B (check 7)")
_SLOW_CAUSES = ("LoRA dropout on the low-rank input keeps the training loss noisy (harmless: check 9 measures in "
                "eval mode); the update is scaled too little (check 7); a learning rate too low for 300 steps")


def toy_verdict(losses) -> ToyVerdict:
    """Judge the toy run from its losses, one per step: did it learn, go NaN, or stall, and the likely causes."""
    losses = [float(v) for v in losses]
    if not losses:
        return ToyVerdict("stalled", "✗ No losses were recorded: did the loop run?")
    bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    if bad is not None:
        last = f" (last finite loss {losses[bad - 1]:.3g} at step {bad - 1})" if bad else ""
        return ToyVerdict("nan", f"✗ The loss became {losses[bad]} at step {bad}{last}: training blew up. "
                                 f"Likely causes: {_NAN_CAUSES}.")
    start, end = losses[0], losses[-1]
    ratio = end / start if start > 0 else math.inf
    where = f"{start:.3g} at the start, {end:.2e} after {len(losses)} steps ({ratio:.1e} of the start)"
    if ratio < TOY_TARGET:
        return ToyVerdict("learned", f"✓ loss {where}: the low-rank path learned the rank-r change.")
    if ratio <= TOY_STALLED:
        return ToyVerdict("slow", f"~ loss {where}: it fell, but a target reachable at rank r should end below "
                                  f"{TOY_TARGET:.0%} of the start. Likely causes: {_SLOW_CAUSES}.")
    return ToyVerdict("stalled", f"✗ loss {where}: the loss stalled. Likely causes: {_STALL_CAUSES}.")


@dataclass(frozen=True)
class Summary:
    """The closing summary: the rubric items the kit can measure, as rows of (item, measured, verdict)."""

    rows: tuple
    notes: tuple

    def __repr__(self) -> str:
        width = max(len(item) for item, _, _ in self.rows)
        lines = ["What the kit measured of the rubric"]
        lines += [f"{mark} {item.ljust(width)}  {measured}" for item, measured, mark in self.rows]
        return "\n".join(lines + list(self.notes))

    def _repr_html_(self) -> str:
        body = "".join(f"<tr><td>{html.escape(mark)}</td><td style='text-align:left'>{html.escape(item)}</td>"
                       f"<td style='text-align:left'>{html.escape(measured)}</td></tr>"
                       for item, measured, mark in self.rows)
        notes = "".join(f"<p>{html.escape(n)}</p>" for n in self.notes)
        return (f"<b>What the kit measured of the rubric</b><table><tr><th></th><th>rubric item</th>"
                f"<th>measured</th></tr>{body}</table>{notes}")


def _kit_checks(LoRALinear) -> tuple[str, str]:
    from checks.probe import Unusable
    from checks.runner import evaluate

    try:
        results = evaluate(LoRALinear)
    except Unusable as u:
        return f"none could run: {u.message}", "✗"
    passed = sum(r.passed for r in results)
    failing = ", ".join(str(r.id) for r in results if not r.passed)
    return (f"{passed} of {len(results)} passed" + (f" (failing: {failing})" if failing else ""),
            "✓" if passed == len(results) else "✗")


def summary(clock: DrillClock, LoRALinear, mine=None) -> Summary:
    """The closing cell: your own checks and their score (`mine`, from checks.test_my_checks), the kit's checks,
    and the clock's laps. The rubric's other items (a table cited, a limitation named, narration) need a listener."""
    rows = []
    if mine is None or not mine.written:
        rows.append(("Wrote at least two sanity checks before being asked",
                     "none written yet (the first cell of Part 4)", "✗"))
    elif getattr(mine, "blocked", ""):
        rows.append(("Wrote at least two sanity checks before being asked",
                     f"{len(mine.written)} written; not scored, because your layer fails the kit's checks", "✗"))
    else:
        written = len(mine.written)
        score = (f"{written} written; caught {len(mine.caught)} of {len(mine.caught) + len(mine.missed)} "
                 f"named mistakes, {len(mine.false_alarms)} false alarm(s) on correct layers")
        good = written >= 2 and mine.caught and not mine.false_alarms
        rows.append(("Wrote at least two sanity checks before being asked", score, "✓" if good else "✗"))
    rows.append(("Kit checks", *_kit_checks(LoRALinear)))
    for lap in clock.laps:
        rows.append((f"Time: {lap.block}", lap.line().split(": ", 1)[1], "✓" if lap.on_time else "✗"))
    missing = [name for name, _ in BLOCKS[len(clock.laps):]]
    if missing:
        rows.append(("Time: blocks not lapped", ", ".join(missing), "✗"))
    rows.append(("Time: the whole drill", f"{_mmss(clock.total)} of 60:00",
                 "✓" if clock.total <= 3600 and not missing else "✗"))
    notes = ("Not measured here: a benefit tied to a table, a limitation named unprompted, narration while coding, "
             "and the red flags. Ask your interviewer, or replay your recording.",)
    return Summary(tuple(rows), notes)
