"""Benchmark: LoRA against full fine-tuning on a small stack of Linear layers: step time and training memory (§4.2).

Run from the repository root: python benchmarks/training.py [--threads N]
"""
import argparse

import torch
from torch import nn

from common import clock, interleave, machine, median_ratio, table, timed
from solution import LoRALinear

D, R, ALPHA, LAYERS, ROWS, ROUNDS = 1024, 8, 16, 4, 1024, 9


def full_model() -> nn.Sequential:
    """LAYERS Linear(D, D) with GELUs between them, every weight trainable: full fine-tuning."""
    blocks = []
    for _ in range(LAYERS):
        blocks += [nn.Linear(D, D), nn.GELU()]
    return nn.Sequential(*blocks[:-1])


def lora_model(full: nn.Sequential) -> nn.Sequential:
    """The same model with each Linear frozen inside a LoRALinear (random non-zero A and B)."""
    blocks = []
    for block in full:
        if isinstance(block, nn.Linear):
            lora = LoRALinear(D, D, r=R, alpha=ALPHA)
            with torch.no_grad():
                lora.base.load_state_dict(block.state_dict())
                lora.B.normal_(0, R ** -0.5)
            block = lora
        blocks.append(block)
    return nn.Sequential(*blocks)


def step_call(model, x, target):
    """One step: zero the grads, forward, mean-squared-error loss, backward, AdamW."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def call():
        optimizer.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x), target).backward()
        optimizer.step()
    return call, optimizer


def megabytes(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2 ** 20


def training_memory(model, optimizer) -> dict:
    """Bytes held by weights, gradients and optimizer state, counted from the tensors themselves."""
    state = [t for per_param in optimizer.state.values() for t in per_param.values() if torch.is_tensor(t)]
    params = list(model.parameters())
    return {"weights": megabytes(params), "gradients": megabytes(p.grad for p in params if p.grad is not None),
            "optimizer state": megabytes(state)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a shared CPU)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    full = full_model()
    models = {"full fine-tuning": full, "LoRA (reference layer)": lora_model(full)}
    x, target = torch.randn(ROWS, D), torch.randn(ROWS, D)
    calls, memory = {}, {}
    for name, model in models.items():
        call, optimizer = step_call(model, x, target)
        call()  # one step, so gradients and optimizer state exist and can be counted
        calls[name], memory[name] = call, training_memory(model, optimizer)
    seconds = interleave({name: timed(call, args.threads, 0) for name, call in calls.items()}, ROUNDS)

    print(machine(args.threads))
    print(f"{LAYERS} Linear({D}, {D}) layers with GELUs between, LoRA r = {R}, α = {ALPHA}, {ROWS} rows, float32, "
          "AdamW, MSE loss. Memory counts the tensors after one step (numel × element size): weights, .grad, "
          f"optimizer.state; activations are not counted. Step time from a torch.utils.benchmark blocked_autorange, "
          f"timed with {clock(args.threads).__name__}, {ROUNDS} interleaved rounds: step ms is the fastest round, "
          "step ratio the median of the per-round ratios.\n")
    baseline = "full fine-tuning"
    rows = []
    for name, model in models.items():
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        mem = memory[name]
        total = sum(mem.values())
        rows.append([name, f"{trainable:,}", *mem.values(), total, total / sum(memory[baseline].values()),
                     f"{min(seconds[name]) * 1e3:.1f}", median_ratio(seconds, name, baseline)])
    header = ["", "trainable params", "weights MB", "gradients MB", "optimizer state MB", "total MB",
              "memory ratio", "step ms", "step ratio"]
    print(table(header, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
