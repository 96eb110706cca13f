"""Round three: layers an outsider wrote against the trusted judge (checks/judge.py), without seeing the catalogue.

Two wrong layers that passed every check then, and correct layers written in unusual but valid ways, one of which
the judge failed (dropout that is random only with autograd on). The same reviewer's plainest correct layers,
once refused as the kit's code, are in tests/test_trust.py; the forgeries are in tests/test_judge.py and
tests/test_trust.py.
"""
from __future__ import annotations

import torch
from torch import nn


class _Frozen(nn.Module):
    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__()
        self.in_features, self.out_features, self.r = in_features, out_features, r
        self.scaling = alpha / r
        self.base = nn.Linear(in_features, out_features, bias=bias)
        self.base.requires_grad_(False)


class SharedSeedA(_Frozen):
    """A from a private generator seeded with torch.initial_seed(): every layer built after one seed has one A."""

    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__(in_features, out_features, r, alpha, bias)
        own = torch.Generator().manual_seed(torch.initial_seed())
        self.A = nn.Parameter(torch.randn(r, in_features, generator=own) / r)  # (r, in)
        self.B = nn.Parameter(torch.zeros(out_features, r))  # (out, r)

    def forward(self, x):
        return self.base(x) + self.scaling * ((x @ self.A.T) @ self.B.T)

    def merged_weight(self):
        return self.base.weight + self.scaling * (self.B @ self.A)


class ScalingAttributeNaN(SharedSeedA):
    """Right numbers from a private copy of α/r, while layer.scaling says NaN."""

    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        _Frozen.__init__(self, in_features, out_features, r, alpha, bias)
        self.A = nn.Parameter(torch.randn(r, in_features) / r)
        self.B = nn.Parameter(torch.zeros(out_features, r))
        self._s, self.scaling = self.scaling, float("nan")

    def forward(self, x):
        return self.base(x) + self._s * ((x @ self.A.T) @ self.B.T)

    def merged_weight(self):
        return self.base.weight + self._s * (self.B @ self.A)


class _Plain(_Frozen):
    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True, p=0.1):
        super().__init__(in_features, out_features, r, alpha, bias)
        self.p = p
        self.A = nn.Parameter(torch.randn(r, in_features) / r)  # (r, in)
        self.B = nn.Parameter(torch.zeros(out_features, r))  # (out, r)

    def merged_weight(self):
        return self.base.weight + self.scaling * (self.B @ self.A)


class DropoutOnlyWithAutograd(_Plain):
    """Inverted dropout on the low-rank input, written by hand, only in a training step (train mode, autograd on)."""

    def forward(self, x):
        low = x
        if self.training and torch.is_grad_enabled():
            low = x * (torch.rand_like(x) >= self.p).to(x.dtype) / (1 - self.p)
        return self.base(x) + self.scaling * ((low @ self.A.T) @ self.B.T)


class NativeDropout(_Plain):
    """LoRA dropout through torch.native_dropout, which returns the output and the mask."""

    def forward(self, x):
        low = torch.native_dropout(x, self.p, True)[0] if self.training else x
        return self.base(x) + self.scaling * ((low @ self.A.T) @ self.B.T)


class TransposedStorage(_Frozen):
    """Aᵀ (in, r) and Bᵀ (r, out) are the parameters, A and B transposed views; forward is one addmm."""

    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__(in_features, out_features, r, alpha, bias)
        self.A_t = nn.Parameter(torch.randn(in_features, r) / r)
        self.B_t = nn.Parameter(torch.zeros(r, out_features))

    A = property(lambda self: self.A_t.T)
    B = property(lambda self: self.B_t.T)

    def forward(self, x):
        rows = x.reshape(-1, self.in_features)
        h = torch.addmm(self.base(rows), rows @ self.A_t, self.B_t, alpha=self.scaling)
        return h.reshape(*x.shape[:-1], self.out_features)

    def merged_weight(self):
        return self.base.weight + self.scaling * (self.B_t.T @ self.A_t.T)


WRONG = {
    "SharedSeedA": (SharedSeedA, "every layer built after one seed starts with the same A", 8),
    "ScalingAttributeNaN": (ScalingAttributeNaN, "layer.scaling is NaN; forward uses a private α/r", 4),
}

CORRECT = {
    "DropoutOnlyWithAutograd": (DropoutOnlyWithAutograd, "hand-written LoRA dropout only in train mode with autograd"),
    "NativeDropout": (NativeDropout, "LoRA dropout with torch.native_dropout"),
    "TransposedStorage": (TransposedStorage, "Aᵀ and Bᵀ stored, A and B as transposed views, one addmm"),
}
