"""The mistake catalogue: broken LoRA layers, each named after its mistake, with the check that must catch it.

Each class changes one thing in an otherwise correct layer (the reference solution), the way learners and the
peers' issue trackers get it wrong.
"""
from __future__ import annotations

import torch
from torch import nn

from solution import LoRALinear as Correct

CAUGHT_BY: dict[str, int] = {}  # class name -> the check that must fail on it


def caught_by(check: int):
    def register(cls):
        CAUGHT_BY[cls.__name__] = check
        return cls
    return register


# --- what trains ---------------------------------------------------------------------------------------------
@caught_by(1)
class BaseWeightTrainable(Correct):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.base.weight.requires_grad_(True)


@caught_by(1)
class BaseBiasTrainable(Correct):
    """loralib's default: weight frozen, bias left trainable."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.base.bias is not None:
            self.base.bias.requires_grad_(True)


@caught_by(1)
class ANotAParameter(Correct):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        A = self.A.detach().clone().requires_grad_(True)
        del self.A
        self.A = A  # a plain tensor attribute: the optimizer never sees it


@caught_by(1)
class BNotAParameter(Correct):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        B = self.B.detach().clone().requires_grad_(True)
        del self.B
        self.B = B


@caught_by(1)
class AFrozen(Correct):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.A.requires_grad_(False)


# --- initialisation ------------------------------------------------------------------------------------------
@caught_by(2)
class BRandomInit(Correct):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        with torch.no_grad():
            self.B.normal_()


@caught_by(6)
class RolesSwapped(Correct):
    """A zero and B random: the output still equals the base at init, but B can never get a gradient."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        with torch.no_grad():
            self.A.zero_()
            self.B.normal_()


@caught_by(8)
class BothZero(Correct):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        with torch.no_grad():
            self.A.zero_()


# --- scaling -------------------------------------------------------------------------------------------------
class _Scaled(Correct):
    """Stores the right `scaling` but multiplies the update by `self.used_scale(alpha, r)` in forward."""

    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__(in_features, out_features, r=r, alpha=alpha, bias=bias)
        self.used = self.used_scale(alpha, r)

    def forward(self, x):
        return self.base(x) + self.used * ((x @ self.A.T) @ self.B.T)

    @torch.no_grad()
    def merged_weight(self):
        return self.base.weight + self.used * (self.B @ self.A)


@caught_by(7)
class ScalingMissing(_Scaled):
    @staticmethod
    def used_scale(alpha, r):
        return 1.0


@caught_by(7)
class ScalingIsAlpha(_Scaled):
    @staticmethod
    def used_scale(alpha, r):
        return alpha


@caught_by(7)
class ScalingInverted(_Scaled):
    @staticmethod
    def used_scale(alpha, r):
        return r / alpha


@caught_by(7)
class ScalingIntegerDivision(_Scaled):
    """Right whenever r divides α (the defaults 8 and 4), wrong otherwise."""

    @staticmethod
    def used_scale(alpha, r):
        return alpha // r


@caught_by(7)
class AlphaIgnored(_Scaled):
    @staticmethod
    def used_scale(alpha, r):
        return 8 / r


@caught_by(7)
class RankIgnored(_Scaled):
    @staticmethod
    def used_scale(alpha, r):
        return alpha / 4


@caught_by(7)
class ScalingAttributeWrong(Correct):
    """Computes the right output but reports `scaling` as α."""

    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__(in_features, out_features, r=r, alpha=alpha, bias=bias)
        self.true_scaling, self.scaling = self.scaling, alpha

    def forward(self, x):
        return self.base(x) + self.true_scaling * ((x @ self.A.T) @ self.B.T)

    @torch.no_grad()
    def merged_weight(self):
        return self.base.weight + self.true_scaling * (self.B @ self.A)


# --- forward -------------------------------------------------------------------------------------------------
@caught_by(10)
class DenseDeltaInForward(Correct):
    """Builds ΔW = B·A at full (out, in) size on every forward: costs what W0 costs."""

    def forward(self, x):
        return self.base(x) + self.scaling * (x @ (self.B @ self.A).T)


@caught_by(6)
class LowRankDetached(Correct):
    def forward(self, x):
        return self.base(x) + self.scaling * ((x @ self.A.T) @ self.B.T).detach()


@caught_by(6)
class LowRankUnderNoGrad(Correct):
    def forward(self, x):
        with torch.no_grad():
            low = (x @ self.A.T) @ self.B.T
        return self.base(x) + self.scaling * low


@caught_by(7)
class BiasIgnored(Correct):
    def forward(self, x):
        return x @ self.base.weight.T + self.scaling * ((x @ self.A.T) @ self.B.T)


@caught_by(2)
class DropoutOnFrozenPath(Correct):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x):
        return self.base(self.dropout(x)) + self.scaling * ((x @ self.A.T) @ self.B.T)


@caught_by(11)
class InputModifiedInPlace(Correct):
    def forward(self, x):
        out = self.base(x)
        return out + self.scaling * ((x.mul_(1.0 + 0.0 * self.r + 1e-3) @ self.A.T) @ self.B.T)


@caught_by(4)
class AShapeTransposed(Correct):
    """Stores A as (in, r), the batch-first habit, and multiplies by it directly."""

    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__(in_features, out_features, r=r, alpha=alpha, bias=bias)
        self.A = nn.Parameter(torch.randn(in_features, r) / r)  # (in, r): wrong

    def forward(self, x):
        return self.base(x) + self.scaling * ((x @ self.A) @ self.B.T)

    @torch.no_grad()
    def merged_weight(self):
        return self.base.weight + self.scaling * (self.B @ self.A.T)


# --- merged_weight -------------------------------------------------------------------------------------------
@caught_by(5)
class MergeMissingScaling(Correct):
    @torch.no_grad()
    def merged_weight(self):
        return self.base.weight + self.B @ self.A


@caught_by(5)
class MergeMissingBase(Correct):
    @torch.no_grad()
    def merged_weight(self):
        return self.scaling * (self.B @ self.A)


@caught_by(5)
class MergeTransposed(Correct):
    @torch.no_grad()
    def merged_weight(self):
        return (self.base.weight + self.scaling * (self.B @ self.A)).T


@caught_by(5)
class MergeWritesIntoBase(Correct):
    """Folds ΔW into base.weight in place: a second call, or the next forward, adds it twice."""

    @torch.no_grad()
    def merged_weight(self):
        self.base.weight += self.scaling * (self.B @ self.A)
        return self.base.weight
