"""Table 6 in miniature (LoRA §7.2): the final loss against the rank r when the change to learn has a known rank k,
beside the best any rank-r update can do (Eckart–Young) and the paper's rank ablation rows.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from checks.lab_kit import Report, experiment, fit, pyplot
from checks.probe import forward, make, parts

RANKS = (1, 2, 4, 8, 16, 64)
ZERO = 1e-9  # a best possible below this fraction of the starting loss is zero up to float64 rounding
# Table 6, GPT-3 with Wq and Wv adapted: accuracy at r = 1, 2, 4, 8, 64 (the paper has no r = 16 column).
TABLE6 = {"WikiSQL": {1: 73.4, 2: 73.3, 4: 73.7, 8: 73.8, 64: 73.5},
          "MultiNLI": {1: 91.3, 2: 91.4, 4: 91.3, 8: 91.6, 64: 91.4}}


def best_possible(delta: torch.Tensor, x: torch.Tensor, r: int) -> float:
    """The lowest MSE any rank-r update BA reaches against x (delta)ᵀ on the inputs x (batch, in).

    With x = QR, ‖x Eᵀ‖ = ‖E Rᵀ‖ for E = delta − BA, so Eckart–Young applies to delta Rᵀ: the energy beyond its
    r largest singular values, averaged over batch and outputs as F.mse_loss averages."""
    R = torch.linalg.qr(x, mode="r")[1]  # (in, in)
    s = torch.linalg.svdvals(delta @ R.T)
    return (s[r:] ** 2).sum().item() / (x.shape[0] * delta.shape[0])


@experiment
def rank_ablation(cls, true_rank: int = 4, ranks=RANKS, d: int = 64, steps: int = 300, lr: float = 5e-2,
                  plot: bool = True) -> Report:
    """Train LoRALinear(d, d, r) for each r toward the frozen base plus a rank-`true_rank` change."""
    first = make(cls, d, d, r=ranks[0])
    base = parts(first).base
    delta = torch.randn(d, true_rank) @ torch.randn(true_rank, d) / d ** 0.5  # (out, in), rank true_rank
    x = torch.randn(128, d)
    with torch.no_grad():
        y = x @ (base.weight + delta).T + base.bias
        start = F.mse_loss(base(x), y).item()
    layers = [first] + [make(cls, d, d, r=r) for r in ranks[1:]]
    with torch.no_grad():
        for layer in layers[1:]:
            parts(layer).base.load_state_dict(base.state_dict())
    # One optimiser over the summed losses: Adam is per-parameter and the layers share nothing trainable, so each
    # layer trains as it would alone, with one optimiser step per iteration instead of six.
    trainable = [p for layer in layers for p in layer.parameters() if p.requires_grad]
    fit(trainable, lambda: sum(F.mse_loss(forward(layer, x), y) for layer in layers), steps, lr, desc="ranks")
    with torch.no_grad():
        final = {r: F.mse_loss(forward(layer, x), y).item() for r, layer in zip(ranks, layers)}
    # Eckart–Young's floor is exactly 0 from the true rank on; in float64 it comes out near 1e-13, which is rounding.
    floor = {r: 0.0 if f <= ZERO * start else f for r, f in ((r, best_possible(delta, x, r)) for r in ranks)}
    rows = [(r, f"{final[r]:.1e}", f"{floor[r]:.1e}" if floor[r] else "0 (exact)", f"{final[r] / start:.0e}",
             TABLE6["WikiSQL"].get(r, "—"), TABLE6["MultiNLI"].get(r, "—")) for r in ranks]
    if plot:
        _plot(final, floor, true_rank)
    return Report(f"Rank ablation: LoRALinear({d}, {d}, r), {steps} Adam steps, the change to learn of rank {true_rank}",
                  ("r", "final loss", "best possible", "final / start", "Table 6 WikiSQL (Wq, Wv)", "MultiNLI"),
                  rows, _notes(final, floor, start, true_rank, steps), dict(final=final, floor=floor, start=start))


def _notes(final: dict, floor: dict, start: float, true_rank: int, steps: int) -> list[str]:
    """What the numbers say, worked out from them: the cliff below the true rank, the gap to an exact zero above."""
    reachable = [r for r in final if floor[r] == 0]
    notes = [f"Loss before adapting: {start:.2f}. The change to learn has rank {true_rank}: below it no rank-r update",
             "can reach it, and the best possible is Eckart–Young's (the cliff)."]
    if reachable:
        low, high = min(final[r] for r in reachable), max(final[r] for r in reachable)
        notes += [f"From r = {min(reachable)} on the best possible is exactly 0; after {steps} Adam steps your runs end "
                  f"between {low:.1e} and {high:.1e}",
                  f"({high / start:.0e} of the start or less). That gap is left by the optimizer (Adam at a constant "
                  "learning rate keeps",
                  "taking steps of about lr) and by float32 rounding, not by the rank."]
    notes += ["Table 6 is flat from r=1 for Wq, Wv: GPT-3's needed change has a very low intrinsic rank. Ours was",
              f"built with rank {true_rank}, so the cliff sits at {true_rank}."]
    return notes


def _plot(final: dict, floor: dict, true_rank: int) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    ranks = list(final)
    ax.plot(ranks, [final[r] for r in ranks], "o-", label="your layer, final loss")
    below = [r for r in ranks if floor[r] > 0]
    ax.plot(below, [floor[r] for r in below], "k--", label="best possible at rank r")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    zero = [r for r in ranks if floor[r] == 0]
    if zero:  # a log axis cannot draw 0: mark those ranks at the foot of the plot, and say so
        foot = min(final.values()) / 10
        ax.set_ylim(bottom=foot / 3)
        ax.plot(zero, [foot] * len(zero), "kv", label="best possible = 0 exactly (marked at the foot)")
    ax.axvline(true_rank, color="#dd8452", linestyle=":", label=f"true rank k = {true_rank}")
    ax.set_xticks(ranks, [str(r) for r in ranks])
    ax.set_title("Rank ablation (Table 6 in miniature)")
    ax.set_xlabel("rank r")
    ax.set_ylabel("final MSE (log scale)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))  # beside the plot: no run hidden under it
    fig.tight_layout()
    plt.show()
