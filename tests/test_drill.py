"""The drill's furniture (checks/drill.py): the plan, the clock and its laps, the toy run's verdict, the closing
summary."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from checks.drill import BLOCKS, DrillClock, Lap, summary, toy_verdict
from solution import LoRALinear as Correct
from tests.mistakes import BRandomInit


class FakeTime:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_plan_fills_sixty_minutes_in_four_blocks():
    assert [name for name, _ in BLOCKS] == ["Read", "Explain", "Implement", "Sanity-check"]
    assert sum(minutes for _, minutes in BLOCKS) == 60


def test_laps_are_kept_with_their_seconds_and_lap_returns_nothing(capsys):
    t = FakeTime()
    clock = DrillClock(clock=t)
    t.now += 14 * 60
    assert clock.lap() is None  # the cell shows the printed line only, not a raw float
    t.now += BLOCKS[1][1] * 60 + 30
    clock.lap()
    assert clock.laps == [Lap("Read", 15, 14 * 60.0), Lap("Explain", BLOCKS[1][1], BLOCKS[1][1] * 60 + 30.0)]
    assert clock.laps[-1].seconds == BLOCKS[1][1] * 60 + 30
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("Read: 14:00 of 15:00, on time.")
    assert "over by 00:30" in out[2] and f"Next: {BLOCKS[2][0]}" in out[2]


def test_a_fifth_lap_changes_nothing(capsys):
    t = FakeTime()
    clock = DrillClock(clock=t)
    for _ in range(5):
        t.now += 60
        clock.lap()
    assert len(clock.laps) == 4 and clock.total == 240
    assert "All four blocks are done" in capsys.readouterr().out


# --- the toy run's verdict ---------------------------------------------------------------------------------------
def test_a_nan_is_named_with_its_step_and_likely_causes():
    verdict = toy_verdict([2.0, 5.0, 1e30, math.nan, math.nan])
    assert verdict.status == "nan"
    assert "step 3" in verdict.text and "last finite loss 1e+30 at step 2" in verdict.text
    assert "α instead of α/r" in verdict.text and "learning rate" in verdict.text


def test_an_infinite_loss_counts_as_blowing_up():
    assert toy_verdict([1.0, math.inf]).status == "nan"


def test_a_flat_loss_is_a_stall_with_its_causes():
    verdict = toy_verdict([2.0] * 10 + [1.9])
    assert verdict.status == "stalled"
    assert "check 8" in verdict.text and "no_grad" in verdict.text and "nn.Parameter" in verdict.text


def test_a_loss_that_falls_but_not_far_enough_is_slow():
    verdict = toy_verdict([2.0, 1.0, 0.2])  # 10% of the start
    assert verdict.status == "slow" and "dropout" in verdict.text


def test_a_loss_below_five_percent_of_its_start_has_learned():
    verdict = toy_verdict([2.0, 0.5, 0.099])
    assert verdict.status == "learned" and repr(verdict).startswith("✓")


# --- the closing summary -----------------------------------------------------------------------------------------
def _clock_after(minutes):
    t = FakeTime()
    clock = DrillClock(clock=t)
    for m in minutes:
        t.now += m * 60
        clock.lap()
    return clock


def _mine(written, caught, missed, false_alarms, blocked=""):
    return SimpleNamespace(written=written, caught=caught, missed=missed, false_alarms=false_alarms, blocked=blocked)


def test_the_summary_scores_the_learners_checks_the_kits_and_the_laps():
    mine = _mine(["check_b_zero", "check_shapes"], ["BRandomInit"], ["BothZero", "AFrozen"], [])
    result = summary(_clock_after([15, 12, 20, 10]), Correct, mine=mine)
    rows = {item: (measured, mark) for item, measured, mark in result.rows}
    assert rows["Wrote at least two sanity checks before being asked"] == (
        "2 written; caught 1 of 3 named mistakes, 0 false alarm(s) on correct layers", "✓")
    assert rows["Kit checks"] == ("11 of 11 passed", "✓")
    assert rows["Time: Explain"][1] == "✗" and "over by 02:00" in rows["Time: Explain"][0]
    assert rows["Time: the whole drill"] == ("57:00 of 60:00", "✓")
    assert "Kit checks" in repr(result) and "<table>" in result._repr_html_()


@pytest.mark.parametrize("mine", [None, _mine(["only_one"], ["BRandomInit"], [], []),
                                  _mine(["a", "b"], ["BRandomInit"], [], ["LoRADropout"]),
                                  _mine(["a", "b"], [], [], [], blocked="check 2 fails")],
                         ids=["none", "one check", "a false alarm", "not scored"])
def test_the_checks_item_fails_without_two_checks_free_of_false_alarms(mine):
    result = summary(_clock_after([15]), Correct, mine=mine)
    (mark,) = [m for item, _, m in result.rows if item.startswith("Wrote at least two")]
    assert mark == "✗"


def test_the_summary_names_failing_kit_checks_and_blocks_not_lapped():
    rows = {item: (measured, mark) for item, measured, mark in summary(_clock_after([15]), BRandomInit).rows}
    assert rows["Kit checks"][1] == "✗" and "failing: 2" in rows["Kit checks"][0]
    assert rows["Time: blocks not lapped"] == ("Explain, Implement, Sanity-check", "✗")
