"""Make checks/data/tiny_attention.pt: the "pretrained" one-head attention model of the lab's Table 5 in miniature
(LoRA §7.1), and the shifted task it is adapted to. Deterministic: the same seed gives the same tensors.
    python tools/make_tiny_attention.py [OUT]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent.parent / "checks" / "data" / "tiny_attention.pt"
D_MODEL, SEQ_LEN, SEED = 16, 8, 2106  # the seed nods to the paper's arXiv number
SHIFT = 0.5  # the task's change, relative to the pretrained weights' size
# Larger query and key weights make the pretrained attention pick tokens out instead of averaging them.
GAIN = {"q": 2.0, "k": 2.0, "v": 1.0, "o": 1.0}


def make(seed: int = SEED) -> dict:
    """Pretrained W0 for q, k, v, o, and the task's weights: each W0 moved by a dense random change of the same
    relative size, so the task itself favours no projection. Stacked (4, d, d) in GAIN's order: two tensors keep
    the file small."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor(list(GAIN.values())).view(4, 1, 1) / D_MODEL ** 0.5
    pretrained = torch.randn(4, D_MODEL, D_MODEL, generator=g) * scale  # (4, out, in)
    task = pretrained + SHIFT * torch.randn(4, D_MODEL, D_MODEL, generator=g) * scale
    return {"names": list(GAIN), "seq_len": SEQ_LEN, "seed": seed, "pretrained": pretrained, "task": task}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(make(), out)
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
