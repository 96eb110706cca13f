"""The drill's furniture: the instructor's solution swap and the drill clock (the design document's 60-minute plan)."""
from __future__ import annotations

import os
import time

SWAP_VARIABLE = "LORA_DRILL_SOLUTION"

# The four blocks of the 60-minute drill, in order, with their budgets in minutes.
BLOCKS = (("Read", 15), ("Explain", 5), ("Implement", 30), ("Sanity-check", 10))


def swap_in(LoRALinear):
    """The class the notebook should use: the reference solution when LORA_DRILL_SOLUTION=1, else the learner's."""
    if os.environ.get(SWAP_VARIABLE, "") not in ("", "0"):
        from solution import LoRALinear as reference
        print(f"{SWAP_VARIABLE} is set: using the reference solution in place of the stub above.")
        return reference
    return LoRALinear


def _mmss(seconds: float) -> str:
    return f"{int(seconds) // 60:02d}:{int(seconds) % 60:02d}"


class DrillClock:
    """Start once; call lap() at the end of each block to see the time used against that block's budget."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._last = self._start = clock()
        self._block = 0
        print(f"Clock started. First block: {BLOCKS[0][0]} ({BLOCKS[0][1]} min). Call clock.lap() when it is done.")

    def lap(self) -> float:
        """End the current block; print its time against its budget and the drill's total. Returns the block's seconds."""
        if self._block >= len(BLOCKS):
            print("All four blocks are done; start a new clock to drill again.")
            return 0.0
        now = self._clock()
        used, self._last = now - self._last, now
        name, budget = BLOCKS[self._block]
        verdict = "on time" if used <= budget * 60 else f"over by {_mmss(used - budget * 60)}"
        self._block += 1
        following = (f" Next: {BLOCKS[self._block][0]} ({BLOCKS[self._block][1]} min)."
                     if self._block < len(BLOCKS) else " Drill complete.")
        print(f"{name}: {_mmss(used)} of {budget:02d}:00, {verdict}. Total {_mmss(now - self._start)} of 60:00.{following}")
        return used
