"""The reference LoRALinear: LoRA's method (Hu et al., 2021, arXiv:2106.09685, §4.1) in one screen."""
import torch
from torch import nn


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update: h = x W0ᵀ + b + (α/r)·x Aᵀ Bᵀ.

    forward fuses the scale-and-add; forward_plain is the same h written as the formula reads (equal up to float
    rounding, tested). merged_weight() returns a new (out, in) tensor and never writes into base: safe to call twice.
    """

    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__()
        self.in_features, self.out_features, self.r = in_features, out_features, r
        # α/r keeps the update's size steady when r changes, so the learning rate need not be re-tuned (§4.1).
        self.scaling = alpha / r
        self.base = nn.Linear(in_features, out_features, bias=bias)  # W0  # (out, in), the "pretrained" layer
        # Frozen: no gradients and no optimizer state for W0, which is where the memory saving comes from (§4.2).
        self.base.requires_grad_(False)
        # A random (Gaussian, §4.1) and B zero, so ΔW = BA = 0 and training starts exactly at the pretrained model.
        self.A = nn.Parameter(torch.randn(r, in_features) / r)  # (r, in)
        self.B = nn.Parameter(torch.zeros(out_features, r))  # (out, r)

    def forward(self, x):  # x: (..., in)
        rows = x.reshape(-1, self.in_features)  # (n, in): leading dims flattened, as a matrix multiply-add needs
        h = self.base(rows)  # (n, out), a fresh tensor we may write into
        # Down to rank r first, then back up: the dense (out, in) ΔW is never built (that would cost what W0 costs).
        down = rows @ self.A.T  # (n, r)
        # h += (α/r)·down Bᵀ as one fused multiply-add (BLAS's C ← αAB + C), written into h. forward_plain instead
        # writes three (n, out) tensors (product, scaled product, sum) and one more backward (benchmarks/layers.py).
        # Bᵀ is copied row-major (just r·out numbers) so B's gradient is computed as downᵀ·grad, BLAS's fast layout.
        h.addmm_(down, self.B.T.contiguous(), alpha=self.scaling)
        return h.view(*x.shape[:-1], self.out_features)  # (..., out)

    def forward_plain(self, x):  # x: (..., in)
        """The teaching form of forward: same h, same gradients, slower (scale and add are separate passes)."""
        return self.base(x) + self.scaling * ((x @ self.A.T) @ self.B.T)  # (..., out)

    @torch.no_grad()
    def merged_weight(self):
        """W0 + (α/r)·BA  # (out, in): one matrix, so inference costs exactly what nn.Linear costs (§4.1)."""
        return self.base.weight + self.scaling * (self.B @ self.A)
