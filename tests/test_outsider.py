"""Layers written from scratch by a reviewer who had not seen the catalogue (tests/outsider_layers.py).

Each wrong layer must fail first on the check named here, with a message that names its real cause; each correct
layer must pass every check. Before the checks judged behaviour, 11 of these 21 wrong layers passed every check,
8 got a misleading message and 3 correct layers failed.
"""
import pytest

from checks.runner import evaluate
from tests import outsider_layers

# name -> (the check that must fail first, words its message must contain)
FIRST_FAILURE = {
    "DenseAlphaThenDivR": (10, "forward built the dense"),
    "DensePaddedB": (10, "forward built the dense"),
    "DenseUnderNoGrad": (10, "under torch.no_grad()"),
    "SquareMergeTranspose": (5, "the update transposed"),
    "MergeCacheIgnoresBase": (5, "after base.weight changes in place"),
    "MergeReturnsW0Itself": (5, "shares memory"),
    "LoralibMergeOnEval": (3, "rounding-sized drift"),
    "RsLoRAScale": (7, "α/√r"),
    "InvertedDropoutFlag": (5, "random (dropout?) is active outside train mode"),
    "ForwardDecaysB": (5, "forward changed the layer's parameters (B)"),
    "StraightThroughScale": (7, "the gradient with respect to"),
    "ChunkedDropsTail": (7, "(3, 70, 12)"),
    "StateDictDropsLoRA": (1, "state_dict() leaves out A, B"),
    "HandBackwardNoXGrad": (7, "the gradient with respect to x"),
    "EmptyInitA": (8, "A starts with"),
    "SymmetricA": (8, "rank 1 of a possible 4"),
    "StaleTransposeView": (1, "after layer.to(torch.float64)"),
    "OneDimCrash": (4, "input of shape (10,)"),
    "BiasCopy": (6, "a copy of base's weight or bias"),
    "BF16LowRank": (7, "differs from x W0ᵀ + b"),
}
# A layer that changes what it does when it sees the kit watching is out of reach of any in-process check: it is
# in the README's threat model as not defended. Strict, so the day a check does catch it, this test says so.
UNDEFENDED = {"DenseUnlessWatched": "detects check 10's TorchFunctionMode and hides its dense ΔW from it"}


def test_every_wrong_layer_has_an_expectation():
    assert set(FIRST_FAILURE) | set(UNDEFENDED) == set(outsider_layers.WRONG)
    assert len(outsider_layers.WRONG) >= 10 and len(outsider_layers.CORRECT) >= 10


@pytest.mark.parametrize("name", sorted(FIRST_FAILURE))
def test_wrong_layer_fails_first_on_its_check_naming_the_cause(name):
    cls, what, _ = outsider_layers.WRONG[name]
    failures = [r for r in evaluate(cls) if not r.passed]
    assert failures, f"{name} passed every check: {what}"
    check, words = FIRST_FAILURE[name]
    assert (failures[0].id, words in failures[0].message) == (check, True), failures[0].line()
    assert all(r.hint for r in failures)


@pytest.mark.parametrize("name", sorted(UNDEFENDED))
@pytest.mark.xfail(strict=True, reason="a layer that detects the checks is not defended (README: threat model)")
def test_layers_that_detect_the_checks_are_not_caught(name):
    cls, _, _ = outsider_layers.WRONG[name]
    assert [r for r in evaluate(cls) if not r.passed]


@pytest.mark.parametrize("name", sorted(outsider_layers.CORRECT))
def test_correct_layer_passes_every_check(name):
    cls, why = outsider_layers.CORRECT[name]
    assert [r.line() for r in evaluate(cls) if not r.passed] == [], why
