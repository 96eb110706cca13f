"""Correct LoRA layers that differ from the reference solution: the checks must pass every one of them."""
from __future__ import annotations

import math

import loralib
import torch
from torch import nn
from torch.nn import functional as F


class _Frozen(nn.Module):
    """The parts every variant shares: sizes, scaling, a frozen base."""

    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__()
        self.in_features, self.out_features, self.r, self.scaling = in_features, out_features, r, alpha / r
        self.base = nn.Linear(in_features, out_features, bias=bias).requires_grad_(False)

    @torch.no_grad()
    def merged_weight(self):
        return self.base.weight + self.scaling * (self.B @ self.A)


class KaimingA(_Frozen):
    """loralib's and peft's default init for A, and F.linear for both paths."""

    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__(in_features, out_features, r, alpha, bias)
        self.A = nn.Parameter(torch.empty(r, in_features))  # (r, in)
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(out_features, r))  # (out, r)

    def forward(self, x):
        return self.base(x) + F.linear(F.linear(x, self.A), self.B) * self.scaling


class TinyGaussianEinsum(_Frozen):
    """A at the drill page's scale (0.01·N(0, 1)), the update written with einsum."""

    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__(in_features, out_features, r, alpha, bias)
        self.A = nn.Parameter(0.01 * torch.randn(r, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, r))

    def forward(self, x):
        down = torch.einsum("...i,ri->...r", x, self.A)
        return self.base(x) + self.scaling * torch.einsum("...r,or->...o", down, self.B)


class LoRADropoutMergeable(_Frozen):
    """LoRA dropout on the low-rank input, extra keyword arguments, and merge()/unmerge() for serving."""

    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True, dropout=0.1, init_scale=1.0):
        super().__init__(in_features, out_features, r, alpha, bias)
        self.A = nn.Parameter(init_scale * torch.randn(r, in_features) / math.sqrt(r))
        self.B = nn.Parameter(torch.zeros(out_features, r))
        self.dropout = nn.Dropout(dropout)
        self.merged = False

    def forward(self, x):
        if self.merged:
            return F.linear(x, self.base.weight, self.base.bias)
        return self.base(x) + self.scaling * (self.dropout(x) @ self.A.T @ self.B.T)

    @torch.no_grad()
    def merge(self):
        """Fold ΔW into base for serving; calling it twice adds nothing more."""
        if not self.merged:
            self.base.weight += self.scaling * (self.B @ self.A)
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.base.weight -= self.scaling * (self.B @ self.A)
            self.merged = False


class WrapsLoralib(nn.Module):
    """Wraps loralib's LoRA Linear, exposing its factors as A, B and its weight as base, through properties."""

    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True, dropout=0.0):
        super().__init__()
        self.in_features, self.out_features, self.r = in_features, out_features, r
        self.inner = loralib.Linear(in_features, out_features, r=r, lora_alpha=alpha, lora_dropout=dropout,
                                    merge_weights=False, bias=bias)
        self.inner.requires_grad_(False)
        self.inner.lora_A.requires_grad_(True)
        self.inner.lora_B.requires_grad_(True)
        self._base = nn.Linear(in_features, out_features, bias=bias)
        self._base.weight = self.inner.weight  # shared, not copied
        if bias:
            self._base.bias = self.inner.bias

    scaling = property(lambda self: self.inner.scaling)
    A = property(lambda self: self.inner.lora_A)
    B = property(lambda self: self.inner.lora_B)
    base = property(lambda self: self._base)

    def forward(self, x):
        return self.inner(x)

    @torch.no_grad()
    def merged_weight(self):
        return self.inner.weight + self.inner.scaling * (self.inner.lora_B @ self.inner.lora_A)


CORRECT = [KaimingA, TinyGaussianEinsum, LoRADropoutMergeable, WrapsLoralib]
