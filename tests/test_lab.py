"""The "Going further" lab (checks/lab*.py): its arithmetic against the paper's numbers, its memory figures against
hand counts, the mixed-adapter batch against per-row references, and a broken layer stopped with a clear message."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from checks import lab
from checks.lab_attention import CONFIGS, _verdict, load
from checks.lab_rank import best_possible
from checks.report import CheckFailed
from solution import LoRALinear as Correct
from tests.conftest import ROOT


class BStartsRandom(Correct):
    """B random at init: the adapted layer no longer starts at the pretrained one (check 2 catches it)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        torch.nn.init.normal_(self.B)


class Stub(torch.nn.Module):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("Part 3: write LoRALinear.__init__")


# --- parameter budget: Table 4, Table 5, §4.2 -------------------------------------------------------------------
@pytest.fixture(scope="module")
def budget():
    return lab.parameter_budget(Correct).values


def test_gpt3_trainable_parameters_match_table_4(budget):
    assert round(budget["r1"] / 1e6, 1) == 4.7  # Table 4, LoRA r=1
    assert round(budget["r8"] / 1e6, 1) == 37.7  # Table 4, LoRA r=8


def test_the_equal_budget_is_table_5s_18m(budget):
    assert int(budget["r4"] / 1e6) == 18  # the paper writes 18M for 18.87M
    # Table 5's three layouts (one matrix at r=8, two at r=4, four at r=2) cost the same.
    assert {lab.lora_trainable(12288, 96 * n, r) for n, r in ((1, 8), (2, 4), (4, 2))} == {budget["r4"]}


def test_the_reduction_is_about_ten_thousand_fold(budget):
    assert 0.9e4 < budget["reduction"] < 1.1e4  # §4.2: "by 10,000 times"


def test_the_checkpoints_are_35_mb_and_350_gb(budget):
    assert 35e6 < budget["adapter_bytes"] < 40e6  # §4.2: 35 MB (18.9M fp16 parameters: 37.7 MB)
    assert int(budget["full_bytes"] / 1e9) == 350  # §4.2: 350 GB (175,255.8M fp16 parameters: 350.5 GB)
    assert round(budget["hundred_tasks_bytes"] / 1e9) == 354  # §4.2, footnote 4: ≈354 GB for 100 tasks


def test_the_papers_rounding_is_stated_beside_the_exact_numbers():
    report = lab.parameter_budget(Correct)
    text = repr(report)
    assert "18.9M (18,874,368)" in text and "37.7 MB (36.0 MiB)" in text  # ours, exact
    assert '"18M (roughly 35MB)"' in text and "(§7.1)" in text  # the paper's, as printed, and where
    assert "9,285×" in text and "rounded" in text


def test_the_toy_count_is_r_times_in_plus_out(budget):
    assert budget["toy_trainable"] == 4 * (64 + 32)
    assert budget["toy_total"] == 64 * 32 + 32 + 4 * (64 + 32)


# --- training memory: hand counts -------------------------------------------------------------------------------
def test_memory_figures_match_hand_counts():
    d, layers, r, f32 = 16, 2, 2, 4
    values = lab.training_memory(Correct, d=d, layers=layers, r=r).values
    dense, low_rank = layers * (d * d + d), layers * 2 * d * r  # full: W and b per layer; LoRA: A and B
    assert values["full"] == dict(weights=dense * f32, gradients=dense * f32, adam=2 * dense * f32,
                                  total=4 * dense * f32)
    assert values["lora"] == dict(weights=(dense + low_rank) * f32, gradients=low_rank * f32,
                                  adam=2 * low_rank * f32, total=(dense + 4 * low_rank) * f32)


# --- latency: the adapter in sequence, and the flop ratio ------------------------------------------------------
def test_the_flop_ratio_is_one_plus_r_in_plus_out_over_in_out():
    assert lab.flop_ratio(512, 512, 8) == pytest.approx(1.03125)
    assert lab.flop_ratio(1024, 1024, 8) == pytest.approx(1 + 16 / 1024)
    assert lab.flop_ratio(64, 32, 4) == pytest.approx(1 + 4 * 96 / (64 * 32))


def test_the_adapter_runs_after_the_layer_through_a_nonlinearity():
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 6)
    adapter = lab.AdapterInSequence(base, 6, 2)
    x = torch.randn(3, 6)
    h = base(x)
    expected = h + adapter.up(torch.relu(adapter.down(h)))  # in sequence: the bottleneck sees the layer's output
    torch.testing.assert_close(adapter(x), expected)
    # Not a linear map, so no single merged weight can stand in for it (Table 1's adapters keep their latency).
    assert not torch.allclose(adapter(2 * x) - adapter(torch.zeros(1, 6)), 2 * (adapter(x) - adapter(torch.zeros(1, 6))))


def test_latency_times_four_variants_and_states_their_flops():
    report = lab.latency(Correct, d=32, r=4, repeats=2, number=2, plot=False)
    assert list(report.values["median_us"]) == ["base nn.Linear", "merged W0 + BA", "unmerged LoRA",
                                                "adapter in sequence"]
    assert report.values["flops"]["unmerged LoRA"] == report.values["flops"]["adapter in sequence"] == 1.25
    assert "per-call overhead" in repr(report) and "1.04× at 1024 rows" in repr(report)


# --- the mixed-adapter batch: per-row references ----------------------------------------------------------------
def _two_adapters(d=6, r=2):
    torch.manual_seed(1)
    layers = [Correct(d, d + 1, r=r), Correct(d, d + 1, r=r)]
    layers[1].base.load_state_dict(layers[0].base.state_dict())
    with torch.no_grad():
        for layer in layers:
            layer.B.normal_()
    return layers


def test_the_unmerged_path_serves_each_row_its_own_adapter():
    layers = _two_adapters()
    x, adapter = torch.randn(5, 6), torch.tensor([1, 0, 0, 1, 1])
    served = lab.serve_mixed(layers, x, adapter)
    for i, k in enumerate(adapter.tolist()):  # reference: the dense formula in float64, row by row
        layer = layers[k]
        W = layer.base.weight.double() + layer.scaling * layer.B.double() @ layer.A.double()
        expected = x[i].double() @ W.T + layer.base.bias.double()
        torch.testing.assert_close(served[i].double(), expected, rtol=1e-5, atol=1e-5)


def test_mixed_batch_reports_the_unmerged_path_right_and_one_merged_weight_wrong():
    values = lab.mixed_batch(Correct, rows=6).values
    assert values["unmerged_right"] == 6
    assert values["merged_right"] == 3  # only the rows that need adapter 0


# --- task switching ---------------------------------------------------------------------------------------------
def test_task_switching_swaps_adapters_and_gets_w0_back():
    d, r = 64, 4
    values = lab.task_switching(Correct, d=d, r=r).values
    assert values["switched"]
    assert values["w0_error"] < 1e-5 and values["merge_error"] < 1e-5
    adapter, layer = 2 * r * d * 4, (d * d + d + 2 * r * d) * 4  # float32 payloads, before torch.save's framing
    assert adapter <= values["adapter_bytes"] < layer <= values["layer_bytes"]


# --- rank ablation, Table 6 in miniature ------------------------------------------------------------------------
def _best_fit_loss(delta, x, r):
    """An independent route to the optimum: whiten with the Cholesky factor of xᵀx, truncate, un-whiten, and
    evaluate the MSE of the fit itself."""
    L = torch.linalg.cholesky(x.T @ x)  # ‖x Eᵀ‖² = ‖E L‖²
    U, S, Vh = torch.linalg.svd(delta @ L)
    fit = (U[:, :r] * S[:r]) @ Vh[:r] @ torch.linalg.inv(L)  # rank r
    return torch.mean((x @ (delta - fit).T) ** 2).item()


def test_best_possible_is_eckart_young_on_the_sample():
    torch.manual_seed(0)
    delta, x = (torch.randn(5, 3) @ torch.randn(3, 7)).double(), torch.randn(40, 7).double()
    for r in (1, 2):
        assert best_possible(delta, x, r) == pytest.approx(_best_fit_loss(delta, x, r), rel=1e-6)
    assert best_possible(delta, x, 3) == pytest.approx(0, abs=1e-9)


def test_rank_ablation_shows_the_cliff_below_the_true_rank():
    values = lab.rank_ablation(Correct, true_rank=2, ranks=(1, 2, 8), d=16, plot=False).values
    final, floor, start = values["final"], values["floor"], values["start"]
    assert all(final[r] >= floor[r] - 1e-6 for r in final)  # nothing beats the best possible
    assert final[1] > 0.1 * start  # below the true rank: the cliff
    assert final[2] < 1e-2 * start and final[8] < 1e-2 * start  # at and above it: flat near zero


def test_rank_ablation_states_an_exact_zero_floor_and_prints_small_losses():
    report = lab.rank_ablation(Correct, true_rank=2, ranks=(1, 2, 8), d=16, plot=False)
    floor = report.values["floor"]
    assert floor[1] > 0 and floor[2] == floor[8] == 0.0  # Eckart–Young: exactly zero from the true rank on
    rows = {row[0]: row for row in report.rows}
    assert rows[2][2] == "0 (exact)" and "e-" in rows[2][1]  # the final loss in scientific notation, not 0.00
    assert not any(cell == "0.00" for row in report.rows for cell in row)
    assert any("best possible is exactly 0" in note for note in report.notes)


def test_the_rank_plot_draws_no_floor_at_a_made_up_value(monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(plt.gcf()))
    lab.rank_ablation(Correct, true_rank=2, ranks=(1, 2, 8), d=16)
    (fig,) = shown
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    floor = lines["best possible at rank r"]
    assert list(floor.get_xdata()) == [1]  # drawn only where the best possible is above zero
    assert list(lines["best possible = 0 exactly (marked at the foot)"].get_xdata()) == [2, 8]
    plt.close(fig)


# --- which weights, Table 5 in miniature ------------------------------------------------------------------------
def test_which_weights_compares_configurations_at_one_budget():
    values = lab.which_weights(Correct, steps=30, plot=False).values
    budgets = {values["budget"][name] for name in CONFIGS}
    assert budgets == {2 * 16 * 8}  # |Θ| = 2 × L̂ × d × r with L̂·r = 8, as in Table 5
    assert all(0 < values["loss_left"][name] < 1 for name in CONFIGS)


@pytest.mark.parametrize("spread_wins", [True, False])
def test_the_verdict_reports_agreement_or_not(spread_wins):
    left = {"Wq": 0.5, "Wv": 0.6, "Wq, Wv": 0.2 if spread_wins else 0.7, "Wq, Wk, Wv, Wo": 0.3 if spread_wins else 0.8}
    line = next(n for n in _verdict(left, 16, 100) if n.startswith("Spreading"))
    assert ("toy yes" in line and "(agrees)" in line) if spread_wins else ("toy no" in line and "(disagrees)" in line)


def _make_script():
    spec = importlib.util.spec_from_file_location("make_tiny_attention", ROOT / "tools" / "make_tiny_attention.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shipped_attention_weights_are_what_the_script_makes(tmp_path):
    script = _make_script()
    assert script.main([str(tmp_path / "tiny_attention.pt")]) == 0
    made, shipped = torch.load(tmp_path / "tiny_attention.pt", weights_only=True), load()
    assert made["names"] == shipped["names"] == ["q", "k", "v", "o"]
    assert torch.equal(made["pretrained"], shipped["pretrained"]) and torch.equal(made["task"], shipped["task"])
    assert (ROOT / "checks" / "data" / "tiny_attention.pt").stat().st_size < 16_000  # a few KB


# --- a broken layer, plots, imports -----------------------------------------------------------------------------
EXPERIMENTS = [lab.parameter_budget, lab.training_memory, lab.latency, lab.mixed_batch, lab.task_switching,
               lab.rank_ablation, lab.which_weights]


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=lambda f: f.__name__)
def test_a_broken_layer_is_stopped_with_the_failing_check(experiment):
    with pytest.raises(CheckFailed) as raised:
        experiment(BStartsRandom)
    text = str(raised.value)
    assert "every check must pass first" in text and "check 2" in text and "hint:" in text
    assert raised.value._render_traceback_() == [f"CheckFailed: {text}"]  # IPython shows the message only


def test_an_unfilled_stub_is_stopped_before_any_measurement():
    with pytest.raises(CheckFailed, match="cannot measure your LoRALinear yet: .*NotImplementedError"):
        lab.parameter_budget(Stub)


def test_the_lab_leaves_the_notebooks_random_state_and_threads_alone():
    torch.manual_seed(123)
    threads, expected = torch.get_num_threads(), torch.rand(3)
    torch.manual_seed(123)
    lab.mixed_batch(Correct)
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("draw", [
    lambda: lab.latency(Correct, d=32, repeats=2, number=2),
    lambda: lab.rank_ablation(Correct, ranks=(1, 4), d=16, steps=2),
    lambda: lab.which_weights(Correct, steps=2),
], ids=["latency", "rank_ablation", "which_weights"])
def test_every_plot_has_a_title_and_labelled_axes(draw, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(plt.gcf()))
    draw()
    (fig,) = shown
    ax = fig.axes[0]
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    assert "(" in ax.get_ylabel()  # the unit, or what the ratio is of
    plt.close(fig)


def test_importing_the_lab_does_not_import_matplotlib():
    code = "import sys, checks; assert 'torch' not in sys.modules; import checks.lab; " \
           "assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
