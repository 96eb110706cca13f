"""checks.test_my_checks: the learner's own checks scored against the catalogue's named mistakes and correct
variants, each derived from a passing class (here the reference solution)."""
from __future__ import annotations

import pytest
import torch

import checks
from checks.catalogue import mistakes, variants
from checks.my_checks import YOURS, test_my_checks as score
from solution import LoRALinear as Correct
from tests.mistakes import BRandomInit

MISTAKES = [e.name for e in mistakes(Correct)]
CORRECT = [YOURS] + [e.name for e in variants(Correct)]


def b_is_zero(LoRALinear):
    """Only asserts B == 0 at init."""
    assert torch.all(LoRALinear(16, 8).B == 0)


def always_fails(LoRALinear):
    raise AssertionError("nothing is ever right")


def does_nothing(LoRALinear):
    pass


def test_a_check_that_only_asserts_b_zero_catches_the_b_random_mistakes_and_no_correct_layer():
    result = score(b_is_zero, base=Correct)
    assert {"BRandomInit", "RolesSwapped"} <= set(result.caught)  # the mistakes that start with B random
    # and nothing else: worked out here without the scorer, by looking at B itself
    b_random = [e.name for e in mistakes(Correct) if torch.any(e.cls(16, 8).B != 0)]
    assert result.caught == b_random and result.missed == [n for n in MISTAKES if n not in b_random]
    assert result.false_alarms == []


def test_a_check_that_always_fails_is_a_false_alarm_on_every_correct_layer():
    result = score(always_fails, base=Correct)
    assert result.false_alarms == CORRECT
    assert result.caught == MISTAKES  # it "catches" everything, which is why false alarms are reported
    assert result.alarms[("always_fails", YOURS)] == "AssertionError: nothing is ever right"


def test_a_check_that_does_nothing_catches_nothing():
    result = score(does_nothing, base=Correct)
    assert result.caught == [] and result.missed == MISTAKES and result.false_alarms == []


def test_each_check_is_scored_on_its_own_and_the_union_is_reported():
    result = score(b_is_zero, does_nothing, base=Correct)
    assert result.written == ["b_is_zero", "does_nothing"]
    assert result.by_check["does_nothing"] == {"caught": [], "false_alarms": []}
    assert result.by_check["b_is_zero"]["caught"] == result.caught


def test_a_check_left_as_a_stub_counts_as_not_written():
    def my_check_2(LoRALinear):
        raise NotImplementedError("write your second check")

    result = score(b_is_zero, my_check_2, base=Correct)
    assert result.written == ["b_is_zero"] and result.unwritten == ["my_check_2"]
    assert result.false_alarms == []  # a stub is not a false alarm
    assert "Not written yet: my_check_2" in repr(result)
    nothing = score(my_check_2, base=Correct)
    assert nothing.written == [] and "Write your checks" in repr(nothing) and "BRandomInit" not in repr(nothing)


def test_checks_sharing_a_name_are_told_apart():
    result = score(lambda L: None, lambda L: None, base=Correct)
    assert result.written == ["<lambda>", "<lambda> #2"]


def test_the_table_names_every_mistake_and_who_caught_it():
    result = score(b_is_zero, always_fails, base=Correct)
    text, page = repr(result), result._repr_html_()
    assert f"caught {len(MISTAKES)} of {len(MISTAKES)} named mistakes" in text
    assert f"{len(CORRECT)} false alarm(s)" in text
    line = next(row for row in text.splitlines() if row.startswith("BRandomInit "))
    assert "b_is_zero, always_fails" in line
    assert "<table>" in page and "<code>BRandomInit</code>" in page and "always_fails" in page


def test_a_checks_prints_and_random_draws_leave_the_notebook_alone(capsys):
    def noisy(LoRALinear):
        print("hello from my check")
        torch.randn(3)

    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    score(noisy, base=Correct)
    assert torch.equal(torch.rand(2), expected)
    assert "hello" not in capsys.readouterr().out


def test_a_layer_failing_the_kits_checks_is_not_scored_but_your_checks_verdicts_on_it_are_shown():
    result = score(b_is_zero, does_nothing, base=BRandomInit)  # no exception: the kit's check cells follow
    assert "derived from your own LoRALinear" in result.blocked and "check 2" in result.blocked
    assert result.caught == result.missed == result.false_alarms == []
    assert result.on_yours["b_is_zero"].startswith("AssertionError") and result.on_yours["does_nothing"] is None
    text = repr(result)
    assert "not scored" in text and "b_is_zero raised on your layer" in text and "does_nothing: passed" in text


@pytest.mark.parametrize("bad, error", [((), ValueError), ((42,), TypeError)])
def test_no_check_or_a_non_function_is_refused(bad, error):
    with pytest.raises(error):
        score(*bad, base=Correct)


def test_the_package_exposes_it_lazily():
    assert checks.test_my_checks is score
