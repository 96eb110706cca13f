"""Property-based tests of the oracle behind check 7: hypothesis draws configurations and shrinks failures.

The kit's checks use a seeded, sorted draw (checks/oracle.py) so that the learner's wait stays short; here
hypothesis explores the same space far more widely, and shows that a failure shrinks to its smallest case.
"""
import math

import pytest
import torch
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from checks.oracle import Config, configs
from checks.probe import Mistake
from checks.sanity import judge_formula
from solution import LoRALinear
from tests import correct_layers, mistakes


@st.composite
def config_strategy(draw, max_size: int = 64) -> Config:
    n_in = draw(st.integers(1, max_size))
    n_out = draw(st.integers(1, max_size))
    r = draw(st.integers(1, min(n_in, n_out)))
    lead = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
    return Config(n_in, n_out, r, alpha=draw(st.integers(1, 64)), bias=draw(st.booleans()), lead=lead,
                  train=draw(st.booleans()), contiguous=draw(st.booleans()))


SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("cls", [LoRALinear, correct_layers.KaimingA, correct_layers.LoRADropoutMergeable,
                                 correct_layers.WrapsLoralib], ids=lambda c: c.__name__)
def test_correct_layers_match_the_formula_for_any_configuration(cls):
    @SETTINGS
    @given(config_strategy())
    def holds(config):
        with torch.random.fork_rng(devices=[]):
            judge_formula(cls, config)
    holds()


def _fails(cls):
    def predicate(config) -> bool:
        try:
            with torch.random.fork_rng(devices=[]):
                judge_formula(cls, config)
        except Mistake:
            return True
        return False
    return predicate


def test_a_failure_shrinks_to_the_smallest_configuration_that_shows_it():
    """WrongAboveIn32 is right below in_features = 33: hypothesis must find it and shrink to exactly 33."""
    smallest = find(config_strategy(), _fails(mistakes.WrongAboveIn32),
                    settings=settings(max_examples=300, deadline=None, derandomize=True,
                                      suppress_health_check=list(HealthCheck)))
    assert smallest.in_features == 33
    with pytest.raises(Mistake, match=r"at LoRALinear\(33, "):
        judge_formula(mistakes.WrongAboveIn32, smallest)


@pytest.mark.parametrize("name", ["ScalingIntegerDivision", "WrongAboveRank4", "EvalDropsUpdate",
                                  "TrainScalesByAlpha", "AssumesContiguous", "WrongCustomBackward"])
def test_hypothesis_finds_each_formula_mistake(name):
    found = find(config_strategy(), _fails(getattr(mistakes, name)),
                 settings=settings(max_examples=300, deadline=None, derandomize=True,
                                   suppress_health_check=list(HealthCheck)))
    assert isinstance(found, Config)


def test_the_kits_seeded_draw_covers_the_space_the_contract_names():
    drawn = configs()
    assert drawn == sorted(drawn, key=lambda c: (c.in_features * c.out_features + c.rows * c.in_features, c.r))
    assert any(c.in_features != c.out_features for c in drawn)
    assert max(max(c.in_features, c.out_features) for c in drawn) >= 60
    assert {1} <= {c.r for c in drawn} and any(c.r > 4 for c in drawn)
    assert any(c.r == min(c.in_features, c.out_features) for c in drawn)
    assert any(c.alpha % c.r for c in drawn)
    assert {c.bias for c in drawn} == {True, False}
    assert {len(c.lead) + 1 for c in drawn} == {2, 3, 4}
    assert any(c.rows > 16 for c in drawn)
    assert {c.contiguous for c in drawn} == {True, False} and {c.train for c in drawn} == {True, False}


@pytest.mark.parametrize("config", [c for c in configs() if not c.contiguous][:3], ids=str)
def test_strided_inputs_defeat_view_and_raw_storage_reads(config):
    x = config.input()
    assert not x.is_contiguous() and x.shape == (*config.lead, config.in_features)
    flat = torch.as_strided(x, (math.prod(config.lead), config.in_features), (config.in_features, 1))
    assert not torch.equal(flat, x.reshape(-1, config.in_features)) or config.rows == 1
