"""The catalogue: named broken layers, and correct variants, derived from a LoRALinear that is right.

Each mistake is a subclass of the class it is given that changes one thing, the way learners get LoRA wrong;
each variant changes something that does not matter, the way correct layers differ. Both use only the drill's
contract (`in_features`, `out_features`, `r`, `scaling`, `base`, `A`, `B`, `merged_weight`), so they can be
derived from the learner's own class once it passes: the kit's tests derive them from the reference solution,
`checks.test_my_checks` from the learner's layer, and the reference solution is never needed for either.

`Entry.check` is the kit check that must fail first on a mistake (0 for a variant, which must pass them all).
"""
from __future__ import annotations

import fractions
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class Entry:
    name: str  # the mistake's (or variant's) name, CamelCase
    check: int  # the kit check that must fail first on it; 0 for a correct variant
    cls: type  # a subclass of the class the catalogue was derived from
    what: str  # one line: what it does differently


def _low(layer, x, scale=None):
    """The low-rank term (α/r)·x Aᵀ Bᵀ, read through the contract."""
    return (layer.scaling if scale is None else scale) * ((x @ layer.A.T) @ layer.B.T)


def _delta(layer):
    return layer.scaling * (layer.B @ layer.A)  # (out, in)


def mistakes(base: type) -> list[Entry]:
    """Broken layers derived from `base`, a LoRALinear that passes every check, in the order of their checks."""
    out: list[Entry] = []

    def entry(check: int, what: str):
        def register(cls):
            cls.__qualname__ = cls.__name__
            out.append(Entry(cls.__name__, check, cls, what))
            return cls
        return register

    # --- check 1: what trains, and the module tree -----------------------------------------------------------
    @entry(1, "base.weight left trainable: full fine-tuning with extra steps")
    class BaseWeightTrainable(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.base.weight.requires_grad_(True)

    @entry(1, "base.bias left trainable (loralib's default), so the pretrained bias drifts")
    class BaseBiasTrainable(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if self.base.bias is not None:
                self.base.bias.requires_grad_(True)

    @entry(1, "A frozen: only B trains")
    class AFrozen(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.A.requires_grad_(False)

    @entry(1, "A is a plain tensor, not an nn.Parameter, so an optimizer never sees it")
    class ANotAParameter(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            A = self.A.detach().clone().requires_grad_(True)
            del self.A
            self.A = A

    @entry(1, "B is a plain tensor, not an nn.Parameter")
    class BNotAParameter(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            B = self.B.detach().clone().requires_grad_(True)
            del self.B
            self.B = B

    @entry(1, "base kept outside the module tree: not in state_dict, not moved by .to()")
    class BaseOutsideModuleTree(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            linear = self._modules.pop("base")
            object.__setattr__(self, "base", linear)

    # --- check 2: the output at init -------------------------------------------------------------------------
    @entry(2, "B starts random: the model starts away from the pretrained one")
    class BRandomInit(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            with torch.no_grad():
                self.B.normal_()

    @entry(2, "dropout on the frozen path's input, so the pretrained output is perturbed while training")
    class DropoutOnFrozenPath(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.frozen_dropout = nn.Dropout(0.1)

        def forward(self, x):
            return self.base(self.frozen_dropout(x)) + _low(self, x)

    @entry(2, "forward leaves out the base's bias")
    class BiasIgnored(base):
        def forward(self, x):
            return x @ self.base.weight.T + _low(self, x)

    # --- check 4: shapes, sizes and defaults -----------------------------------------------------------------
    @entry(4, "the default is bias=False, not the contract's bias=True")
    class DefaultBiasFalse(base):
        def __init__(self, in_features, out_features, r=4, alpha=8, bias=False):
            super().__init__(in_features, out_features, r=r, alpha=alpha, bias=bias)

    @entry(4, "bias=False is ignored: the base always has a bias")
    class BiasAlwaysOn(base):
        def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
            super().__init__(in_features, out_features, r=r, alpha=alpha, bias=True)

    @entry(4, "the default rank is 8, not the contract's 4")
    class DefaultRankEight(base):
        def __init__(self, in_features, out_features, r=8, alpha=8, bias=True):
            super().__init__(in_features, out_features, r=r, alpha=alpha, bias=bias)

    @entry(4, "the default alpha is 16, not the contract's 8")
    class DefaultAlphaSixteen(base):
        def __init__(self, in_features, out_features, r=4, alpha=16, bias=True):
            super().__init__(in_features, out_features, r=r, alpha=alpha, bias=bias)

    @entry(4, "no r attribute")
    class NoRankAttribute(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            del self.r

    @entry(4, "forward flattens 4-D input to 2-D and returns it that way")
    class Flattens4D(base):
        def forward(self, x):
            out = super().forward(x)
            return out.reshape(-1, out.shape[-1]) if x.dim() > 3 else out

    # --- check 5: the merged weight --------------------------------------------------------------------------
    @entry(5, "merged_weight() forgets the α/r scaling")
    class MergeMissingScaling(base):
        @torch.no_grad()
        def merged_weight(self):
            return self.base.weight + self.B @ self.A

    @entry(5, "merged_weight() returns (α/r)·BA without W0")
    class MergeMissingBase(base):
        @torch.no_grad()
        def merged_weight(self):
            return _delta(self)

    @entry(5, "merged_weight() returns the transpose, (in, out)")
    class MergeTransposed(base):
        @torch.no_grad()
        def merged_weight(self):
            return (self.base.weight + _delta(self)).T

    @entry(5, "merged_weight() folds ΔW into base.weight in place: the next forward adds it twice")
    class MergeWritesIntoBase(base):
        @torch.no_grad()
        def merged_weight(self):
            self.base.weight += _delta(self)
            return self.base.weight

    @entry(5, "merged_weight() is computed once and cached: stale after training")
    class MergeCachedOnce(base):
        @torch.no_grad()
        def merged_weight(self):
            if getattr(self, "_merged_cache", None) is None:
                self._merged_cache = self.base.weight + _delta(self)
            return self._merged_cache

    @entry(5, "after merged_weight() is called, forward serves the merged weight it computed then")
    class ForwardChangesAfterMerge(base):
        @torch.no_grad()
        def merged_weight(self):
            self._served = (self.base.weight + _delta(self)).clone()
            return self._served.clone()

        def forward(self, x):
            served = getattr(self, "_served", None)
            return super().forward(x) if served is None else F.linear(x, served, self.base.bias)

    # --- check 6: gradients ----------------------------------------------------------------------------------
    @entry(3, "the low-rank path is detached: A and B never get a gradient, so no training can start")
    class LowRankDetached(base):
        def forward(self, x):
            return self.base(x) + _low(self, x).detach()

    @entry(6, "x.detach() at the top of forward: no gradient reaches the layer's input")
    class InputDetached(base):
        def forward(self, x):
            return super().forward(x.detach())

    @entry(6, "the frozen path computed under torch.no_grad(): the input's gradient skips W0")
    class FrozenPathUnderNoGrad(base):
        def forward(self, x):
            with torch.no_grad():
                frozen = self.base(x)
            return frozen + _low(self, x)

    # --- check 7: the formula, values and gradients ----------------------------------------------------------
    @entry(7, "the update is not scaled at all (α/r missing)")
    class ScalingMissing(base):
        def forward(self, x):
            return self.base(x) + _low(self, x, 1.0)

    @entry(7, "the update is scaled by α instead of α/r")
    class ScalingIsAlpha(base):
        def forward(self, x):
            return self.base(x) + _low(self, x, self.scaling * self.r)

    @entry(7, "the update is scaled by r/α")
    class ScalingInverted(base):
        def forward(self, x):
            return self.base(x) + _low(self, x, 1.0 / self.scaling)

    @entry(7, "α // r, integer division: right only when r divides α")
    class ScalingIntegerDivision(base):
        def forward(self, x):
            return self.base(x) + _low(self, x, float(round(self.scaling * self.r) // self.r))

    @entry(4, "layer.scaling reports α, though forward uses α/r")
    class ScalingAttributeWrong(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.true_scaling = self.scaling
            self.scaling = self.scaling * self.r

        def forward(self, x):
            return self.base(x) + _low(self, x, self.true_scaling)

        @torch.no_grad()
        def merged_weight(self):
            return self.base.weight + self.true_scaling * (self.B @ self.A)

    @entry(6, "forward uses a private copy of W0 taken at construction, not base.weight")
    class PrivateCopyOfW0(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.register_buffer("w0_copy", self.base.weight.detach().clone())

        def forward(self, x):
            return F.linear(x, self.w0_copy, self.base.bias) + _low(self, x)

    @entry(7, "wrong only when in_features > 32: the update is dropped")
    class WrongAboveIn32(base):
        def forward(self, x):
            return self.base(x) if self.in_features > 32 else super().forward(x)

    @entry(7, "wrong only when r > 4: the scaling becomes α/4")
    class WrongAboveRank4(base):
        def forward(self, x):
            if self.r > 4:
                return self.base(x) + _low(self, x, self.scaling * self.r / 4)
            return super().forward(x)

    @entry(7, "in eval mode, forward returns the base alone")
    class EvalDropsUpdate(base):
        def forward(self, x):
            return super().forward(x) if self.training else self.base(x)

    @entry(7, "in train mode, the update is scaled by α")
    class TrainScalesByAlpha(base):
        def forward(self, x):
            if self.training:
                return self.base(x) + _low(self, x, self.scaling * self.r)
            return super().forward(x)

    @entry(7, "forward reads x's storage as if contiguous: wrong for strided input")
    class AssumesContiguous(base):
        def forward(self, x):
            if x.numel() == 0:
                return super().forward(x)
            flat = torch.as_strided(x, (x.numel() // x.shape[-1], x.shape[-1]), (x.shape[-1], 1))
            return super().forward(flat).reshape(*x.shape[:-1], -1)

    @entry(7, "a custom autograd backward that forgets the α/r scaling in A's and B's gradients")
    class WrongCustomBackward(base):
        def forward(self, x):
            return self.base(x) + _UnscaledGradient.apply(x, self.A, self.B, float(self.scaling))

    # --- check 8: the paper's init ---------------------------------------------------------------------------
    @entry(8, "A zero and B random: starts at ΔW = 0 but is not the paper's init")
    class RolesSwapped(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            with torch.no_grad():
                self.A.zero_()
                self.B.normal_()

    @entry(8, "A and B both zero: no gradient ever reaches either")
    class BothZero(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            with torch.no_grad():
                self.A.zero_()

    @entry(8, "A is an identity matrix, the same for every layer: not random")
    class IdentityA(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            with torch.no_grad():
                self.A.copy_(torch.eye(*self.A.shape))

    @entry(8, "A drawn from a private generator seeded from torch.initial_seed(): every layer gets the same A")
    class ASharedAcrossLayers(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            own = torch.Generator().manual_seed(torch.initial_seed())
            with torch.no_grad():
                self.A.copy_(torch.randn(self.A.shape, generator=own) / self.A.shape[0])

    # --- dtypes and the random generator ---------------------------------------------------------------------
    @entry(1, "forward ends in .float(): a layer moved to float64 still answers in float32")
    class OutputAlwaysFloat32(base):
        def forward(self, x):
            return super().forward(x).float()

    @entry(2, "the low-rank path in float64, never cast back: a float32 input gets a float64 output")
    class OutputInFloat64(base):
        def forward(self, x):
            return self.base(x) + self.scaling * ((x.double() @ self.A.double().T) @ self.B.double().T)

    @entry(5, "forward calls torch.manual_seed: every random draw after it repeats")
    class ReseedsInForward(base):
        def forward(self, x):
            torch.manual_seed(0)
            return super().forward(x)

    # --- check 10: the dense ΔW ------------------------------------------------------------------------------
    @entry(10, "forward builds the dense (out, in) ΔW = B·A")
    class DenseDeltaInForward(base):
        def forward(self, x):
            return self.base(x) + self.scaling * (x @ (self.B @ self.A).T)

    @entry(10, "forward merges on the fly: x (W0 + (α/r)·BA)ᵀ")
    class MergesInForward(base):
        def forward(self, x):
            return F.linear(x, self.base.weight + _delta(self), self.base.bias)

    @entry(10, "forward builds ΔW as a 3-D (1, out, in) tensor")
    class DenseDelta3D(base):
        def forward(self, x):
            delta = torch.einsum("zor,ri->zoi", self.B.unsqueeze(0), self.A)  # (1, out, in)
            return self.base(x) + self.scaling * (x @ delta[0].T)

    @entry(10, "forward builds ΔW only for batches over 16 rows, as an 'optimisation'")
    class DenseDeltaBigBatches(base):
        def forward(self, x):
            if x.numel() // x.shape[-1] > 16:
                return self.base(x) + x @ _delta(self).T
            return super().forward(x)

    # --- check 11: the input ---------------------------------------------------------------------------------
    @entry(2, "forward scales its input in place (named by the first check that calls forward)")
    class InputModifiedInPlace(base):
        def forward(self, x):
            out = super().forward(x)
            x.mul_(1.001)
            return out

    return out


class _UnscaledGradient(torch.autograd.Function):
    """(α/r)·x Aᵀ Bᵀ forward; backward right for x but without α/r for A and B (a typical hand-written slip)."""

    @staticmethod
    def forward(ctx, x, A, B, s):
        ctx.save_for_backward(x, A, B)
        ctx.s = s
        return s * ((x @ A.T) @ B.T)

    @staticmethod
    def backward(ctx, g):
        x, A, B = ctx.saved_tensors
        s = ctx.s
        rows, grows = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
        grad_x = s * (g @ B) @ A
        grad_A = (grows @ B).T @ rows  # missing s
        grad_B = grows.T @ (rows @ A.T)  # missing s
        return grad_x, grad_A, grad_B, None


def variants(base: type) -> list[Entry]:
    """Correct layers derived from `base` that differ in ways the checks must accept."""
    out: list[Entry] = []

    def entry(what: str):
        def register(cls):
            cls.__qualname__ = cls.__name__
            out.append(Entry(cls.__name__, 0, cls, what))
            return cls
        return register

    @entry("the frozen weight passed to F.linear through .detach()")
    class DetachedFrozenWeight(base):
        def forward(self, x):
            return F.linear(x, self.base.weight.detach(), self.base.bias) + _low(self, x)

    @entry("the frozen weight read through .data")
    class FrozenWeightData(base):
        def forward(self, x):
            bias = self.base.bias.data if self.base.bias is not None else 0
            return x @ self.base.weight.data.T + bias + _low(self, x)

    @entry("W0ᵀ made contiguous before the multiply")
    class ContiguousTranspose(base):
        def forward(self, x):
            bias = self.base.bias if self.base.bias is not None else 0
            return x @ self.base.weight.T.contiguous() + bias + _low(self, x)

    @entry("a buffer that counts forward calls")
    class CountsCalls(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.register_buffer("calls", torch.zeros((), dtype=torch.long))

        def forward(self, x):
            self.calls += 1
            return super().forward(x)

    @entry("a running statistic buffer that forward updates, NaN before the first call")
    class RunningNaNBuffer(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.register_buffer("running_norm", torch.tensor(float("nan")))

        def forward(self, x):
            with torch.no_grad():
                self.running_norm.fill_(x.detach().norm().item())
            return super().forward(x)

    @entry("scaling stored as a fractions.Fraction")
    class FractionScaling(base):
        def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
            super().__init__(in_features, out_features, r=r, alpha=alpha, bias=bias)
            self.scaling = fractions.Fraction(alpha, r)

        def forward(self, x):
            return self.base(x) + _low(self, x, float(self.scaling))

        @torch.no_grad()
        def merged_weight(self):
            return self.base.weight + float(self.scaling) * (self.B @ self.A)

    try:
        import numpy
    except ImportError:  # the handout runs where numpy may be missing; the variant then simply is not offered
        numpy = None
    if numpy is not None:
        @entry("scaling stored as a numpy float32")
        class NumpyScaling(base):
            def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
                super().__init__(in_features, out_features, r=r, alpha=alpha, bias=bias)
                self.scaling = numpy.float32(alpha) / numpy.float32(r)

            def forward(self, x):
                return self.base(x) + _low(self, x, float(self.scaling))

            @torch.no_grad()
            def merged_weight(self):
                return self.base.weight + float(self.scaling) * (self.B @ self.A)

    @entry("merged_weight() returned in float64")
    class MergedInFloat64(base):
        @torch.no_grad()
        def merged_weight(self):
            return self.base.weight.double() + self.scaling * (self.B.double() @ self.A.double())

    @entry("LoRA dropout on the low-rank input (train mode only)")
    class LoRADropout(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.lora_dropout = nn.Dropout(0.1)

        def forward(self, x):
            return self.base(x) + _low(self, self.lora_dropout(x))

    @entry("the update written with F.linear twice")
    class LinearTwice(base):
        def forward(self, x):
            return self.base(x) + F.linear(F.linear(x, self.A), self.B) * self.scaling

    return out
