"""Benchmark: the reference LoRALinear against nn.Linear, its merged layer, loralib and peft (forward and step).

Run from the repository root: python benchmarks/layers.py [--threads N] [--sizes 256 1024 4096] [--rounds N]
"""
import argparse
import copy
import importlib
import statistics

import torch
from torch import nn

from common import clock, interleave, machine, median_ratio, round_ratios, table, timed
from solution import LoRALinear

ROWS, ALPHA = 1024, 16
SIZES = {256: 15, 1024: 11, 4096: 3}  # d -> rounds; fewer at d = 4096, where one step takes over a second
RANKS = (4, 8, 64)
BLOCK_TIME = 0.1  # seconds each contender runs per round


def optional(name):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def reference(d, r) -> LoRALinear:
    """A reference layer with random non-zero A and B, as after some training."""
    layer = LoRALinear(d, d, r=r, alpha=ALPHA)
    with torch.no_grad():
        layer.A.normal_(0, d ** -0.5)
        layer.B.normal_(0, r ** -0.5)
    return layer


def linear_like(layer: LoRALinear, weight, trainable: bool) -> nn.Linear:
    linear = nn.Linear(layer.in_features, layer.out_features)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(layer.base.bias)
    return linear.requires_grad_(trainable)


class Plain(nn.Module):
    """The reference layer's teaching form, forward_plain, as a module of its own."""

    def __init__(self, layer: LoRALinear):
        super().__init__()
        self.layer = copy.deepcopy(layer)

    def forward(self, x):
        return self.layer.forward_plain(x)


def loralib_layer(loralib, layer: LoRALinear) -> nn.Module:
    lib = loralib.Linear(layer.in_features, layer.out_features, r=layer.r, lora_alpha=ALPHA, merge_weights=False)
    with torch.no_grad():
        for theirs, ours in ((lib.weight, layer.base.weight), (lib.bias, layer.base.bias),
                             (lib.lora_A, layer.A), (lib.lora_B, layer.B)):
            theirs.copy_(ours)
    loralib.mark_only_lora_as_trainable(lib)  # freezes weight and bias, as the reference layer does
    return lib


def peft_layer(peft, layer: LoRALinear) -> nn.Module:
    """peft's LoRA Linear, made the way users make it: get_peft_model on a module holding an nn.Linear."""
    holder = nn.Module()
    holder.proj = linear_like(layer, layer.base.weight, trainable=True)
    config = peft.LoraConfig(r=layer.r, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=["proj"])
    lora = peft.get_peft_model(holder, config).base_model.model.proj
    with torch.no_grad():
        lora.lora_A["default"].weight.copy_(layer.A)
        lora.lora_B["default"].weight.copy_(layer.B)
    return lora


def contenders(d, r, libraries) -> tuple:
    """(forward modules, training modules), each name -> module; all compute the same h = x W0ᵀ + b + s·x AᵀBᵀ."""
    layer = reference(d, r)
    lora = {"reference": layer, "plain": Plain(layer)}
    for name, make in (("loralib", loralib_layer), ("peft", peft_layer)):
        if libraries[name]:
            lora[name] = make(libraries[name], layer)
    frozen = linear_like(layer, layer.base.weight, trainable=False)
    merged = linear_like(layer, layer.merged_weight(), trainable=False)
    full = linear_like(layer, layer.base.weight, trainable=True)
    return {"nn.Linear": frozen, "merged": merged, **lora}, {"full FT": full, **lora}


def assert_same_output(modules: dict, x):
    """Every LoRA layer and the merged layer compute the same h, so the timings compare like with like."""
    with torch.no_grad():
        expected = modules["reference"](x)
        for name, module in modules.items():
            if name != "nn.Linear":
                assert torch.allclose(module(x), expected, rtol=1e-4, atol=1e-4), f"{name} computes another h"


def forward_call(module, x):
    def call():
        with torch.no_grad():  # inference: what the no-added-latency claim is about (§4.1)
            module(x)
    return call


def step_call(module, x, grad):
    """One training step: zero the grads, forward, backward from a fixed output gradient, AdamW step."""
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)

    def call():
        optimizer.zero_grad(set_to_none=True)
        module(x).backward(grad)
        optimizer.step()
    return call


def measure(d, r, rounds, threads, libraries) -> dict:
    forward_modules, train_modules = contenders(d, r, libraries)
    x, grad = torch.randn(ROWS, d), torch.randn(ROWS, d)
    assert_same_output(forward_modules, x)
    # Each contender's time in a round is the median of the blocks that fill BLOCK_TIME (one call per block once a
    # call takes longer than a millisecond or so), so one slow call does not decide a round.
    measures = {("fwd", n): timed(forward_call(m, x), threads, BLOCK_TIME) for n, m in forward_modules.items()}
    measures.update({("step", n): timed(step_call(m, x, grad), threads, BLOCK_TIME)
                     for n, m in train_modules.items()})
    return interleave(measures, rounds)


def row(d, r, seconds, names) -> list:
    def ratio(kind, name, baseline):
        return median_ratio(seconds, (kind, name), (kind, baseline)) if (kind, name) in seconds else "skipped"
    forward = [ratio("fwd", n, "nn.Linear") for n in ["merged"] + names]
    step = [ratio("step", n, "full FT") for n in names]
    return [d, r, 1 + 2 * r / d, *forward, (1 + 5 * r / d) / 2, *step,
            against_libraries(seconds, "fwd"), against_libraries(seconds, "step")]


def against_libraries(seconds, kind) -> str:
    """The reference layer head to head with the harder to beat of loralib and peft: the larger of the two median
    per-round ratios reference / library, with that ratio's interquartile range over rounds. Below 1 the
    reference is faster; a range that straddles 1 is a tie within this machine's noise."""
    libraries = [lib for lib in ("loralib", "peft") if (kind, lib) in seconds]
    if not libraries:
        return "skipped"
    worst = max((round_ratios(seconds, (kind, "reference"), (kind, lib)) for lib in libraries), key=statistics.median)
    if len(worst) < 4:
        return f"{statistics.median(worst):.2f}"
    low, _, high = statistics.quantiles(worst, n=4)
    return f"{statistics.median(worst):.2f} ({low:.2f}–{high:.2f})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a shared CPU)")
    parser.add_argument("--rounds", type=int, help="rounds for every d (default: " +
                        ", ".join(f"{n} at d = {d}" for d, n in SIZES.items()) + ")")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), choices=list(SIZES), help="d values")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    libraries = {name: optional(name) for name in ("loralib", "peft")}
    for name, module in libraries.items():
        if module is None:
            print(f"{name} is not importable: its columns are skipped (pip install -e '.[bench]')")
    names = ["reference", "plain", "loralib", "peft"]
    rounds = {d: args.rounds or n for d, n in SIZES.items()}
    rows = [row(d, r, measure(d, r, rounds[d], args.threads, libraries), names) for d in args.sizes for r in RANKS]
    print(machine(args.threads))
    print(f"{ROWS} rows, float32, α = {ALPHA}. Forward under no_grad, as a ratio to the frozen nn.Linear forward; "
          "training step (zero_grad, forward, backward from a fixed output gradient, AdamW) as a ratio to a full "
          "fine-tuning step of nn.Linear. Each ratio is the median over rounds (per d: "
          + ", ".join(f"{d}: {rounds[d]}" for d in args.sizes) + ") of the ratio measured within the round, all "
          "contenders interleaved in each round; each time is the median block of a torch.utils.benchmark "
          f"blocked_autorange over {BLOCK_TIME} s, timed with {clock(args.threads).__name__}. Floors count matmul "
          "flops only: forward 1 + 2r/d, step (1 + 5r/d)/2. The last two columns put the reference layer head to "
          "head with whichever of loralib and peft it is closest to: the median per-round ratio and its "
          "interquartile range over rounds (below 1: the reference is faster; a range straddling 1: a tie).\n")
    header = ["d", "r", "fwd floor", "merged fwd", *[f"{n} fwd" for n in names],
              "step floor", *[f"{n} step" for n in names], "reference ÷ library fwd", "reference ÷ library step"]
    print(table(header, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
