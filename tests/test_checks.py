"""The checks in process: every broken layer fails first on its check with a hint, every correct variant passes."""
import pytest
import torch

import checks
from checks import catalogue
from checks.probe import Adam
from checks.runner import evaluate
from solution import LoRALinear
from tests import correct_layers, mistakes

VARIANTS = catalogue.variants(LoRALinear)


def failing(cls) -> list:
    return [r for r in evaluate(cls) if not r.passed]


def test_reference_solution_passes_every_check():
    assert failing(LoRALinear) == []


@pytest.mark.parametrize("entry", mistakes.ENTRIES, ids=lambda e: e.name)
def test_each_mistake_fails_first_on_its_check_with_a_hint(entry):
    found = failing(entry.cls)
    assert found, f"every check passed {entry.name}: {entry.what}"
    first = found[0]
    assert first.id == entry.check, f"{entry.name} ({entry.what}) failed first on check {first.id}: {first.message}"
    assert all(r.hint for r in found), [r.line() for r in found if not r.hint]


def test_catalogue_is_large_enough():
    assert len(mistakes.ENTRIES) >= 40 and len(VARIANTS) >= 9
    assert len({e.name for e in mistakes.ENTRIES + VARIANTS}) == len(mistakes.ENTRIES) + len(VARIANTS)
    assert {e.check for e in mistakes.ENTRIES} >= set(range(1, 12)) - {9, 11}


@pytest.mark.parametrize("cls", correct_layers.CORRECT + [v.cls for v in VARIANTS], ids=lambda c: c.__name__)
def test_correct_variants_pass_every_check(cls):
    assert [r.line() for r in failing(cls)] == []


def test_mistakes_derive_from_any_correct_class():
    """The catalogue uses only the contract, so a learner's own correct class works as its base."""
    entries = catalogue.mistakes(correct_layers.KaimingA)
    assert {e.name for e in entries} == set(mistakes.CAUGHT_BY)
    wrong = {e.name: e for e in entries}
    assert [r.id for r in failing(wrong["ScalingIsAlpha"].cls)][:1] == [7]
    assert [r.id for r in failing(wrong["BRandomInit"].cls)][:1] == [2]


def test_notebook_view_raises_check_failed_with_message_and_hint(capsys):
    with pytest.raises(checks.CheckFailed) as raised:
        checks.check_2(mistakes.BRandomInit)
    text = str(raised.value)
    assert "check 2" in text and "B is not zero" in text and "hint: initialise B" in text
    assert raised.value._render_traceback_() == [f"CheckFailed: {text}"]


def test_notebook_view_prints_a_pass(capsys):
    checks.check_4(LoRALinear)
    assert capsys.readouterr().out.startswith("✓ check 4 · shapes")


def test_run_all_raises_on_any_failure_and_lists_all_checks():
    with pytest.raises(checks.CheckFailed) as raised:
        checks.run_all(mistakes.DenseDeltaInForward)
    assert "✗ check 10" in str(raised.value) and "10 of 11 checks passed" in str(raised.value)


def test_unfilled_stub_is_named_as_such():
    class Stub(torch.nn.Module):
        def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
            super().__init__()
            raise NotImplementedError("Part 3: write LoRALinear.__init__")

    with pytest.raises(checks.CheckFailed, match="stub is not filled in yet"):
        checks.check_1(Stub)


def test_check_3_flags_a_notebook_run_that_moved_the_base():
    layer = LoRALinear(6, 4)
    snapshot = layer.base.weight.detach().clone()
    with torch.no_grad():
        layer.base.weight.add_(0.1)
    with pytest.raises(checks.CheckFailed, match="your toy run moved base.weight"):
        checks.check_3(LoRALinear, trained=layer, snapshot=snapshot)


def test_checks_leave_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    evaluate(LoRALinear)
    assert torch.equal(torch.rand(3), expected)


def test_checks_own_adam_follows_torch_optim_adam():
    torch.manual_seed(0)
    ours, theirs = torch.randn(5, requires_grad=True), None
    theirs = ours.detach().clone().requires_grad_(True)
    opt_ours, opt_theirs = Adam([ours], lr=1e-2), torch.optim.Adam([theirs], lr=1e-2)
    for step in range(5):
        for p, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            ((p - step) ** 2).sum().backward()
            opt.step()
    torch.testing.assert_close(ours, theirs)
    # The same two moments, which is what lab.training_memory reads as "Adam state".
    state = opt_theirs.state[theirs]
    torch.testing.assert_close(opt_ours.m[0], state["exp_avg"])
    torch.testing.assert_close(opt_ours.v[0], state["exp_avg_sq"])


def test_check_8_names_an_a_that_torch_empty_made_and_nothing_wrote():
    """Deterministic, whatever the uninitialised memory holds: the watch follows torch.empty's storage."""
    from checks.sanity import _Unwritten, paper_init
    from tests.outsider_layers import WRONG

    with _Unwritten() as watch:
        left = torch.empty(3, 4)
        filled = [torch.empty(3, 4).normal_(), torch.nn.init.kaiming_uniform_(torch.empty(3, 4)), torch.empty(3)]
        filled[2][:] = 1.0
    assert left.untyped_storage().data_ptr() in watch.unwritten
    assert not any(t.untyped_storage().data_ptr() in watch.unwritten for t in filled)
    with pytest.raises(checks.probe.Mistake, match="A is uninitialised memory"):
        paper_init(WRONG["EmptyInitA"][0])
