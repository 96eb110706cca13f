"""An outside reviewer's layers for lora-drill's checks: wrong ones the checks should catch, correct ones they
should pass. Written from the contract alone, each a standalone nn.Module (nothing from `solution` or the kit).

WRONG = {name: (class, what is wrong, check id expected to catch it first, or None)}
CORRECT = {name: (class, why it is still correct)}
"""
import math
from fractions import Fraction

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize


class _Plain(nn.Module):
    """Shared constructor for the wrong layers below: the obvious, correct __init__ (each subclass breaks one thing)."""

    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__()
        self.in_features, self.out_features, self.r, self.alpha = in_features, out_features, r, alpha
        self.scaling = alpha / r
        self.base = nn.Linear(in_features, out_features, bias=bias)
        self.base.requires_grad_(False)
        self.A = nn.Parameter(torch.randn(r, in_features) / r)
        self.B = nn.Parameter(torch.zeros(out_features, r))

    def low(self, x):
        return (x @ self.A.T) @ self.B.T

    def forward(self, x):
        return self.base(x) + self.scaling * self.low(x)

    def merged_weight(self):
        return self.base.weight.detach() + self.scaling * (self.B @ self.A).detach()


# =============================================================================================== WRONG layers


class DenseAlphaThenDivR(_Plain):
    """Builds the dense α·BA in forward and divides by r afterwards: dense, but not any form check 10 looks for."""

    def forward(self, x):
        delta = self.alpha * (self.B @ self.A)  # (out, in): dense ΔW, times r
        return self.base(x) + (x @ delta.T) / self.r


class DensePaddedB(_Plain):
    """Dense ΔW built as an (out+1, in) matrix (B padded with a zero row), then the extra output column dropped."""

    def forward(self, x):
        Bp = torch.cat([self.B, self.B.new_zeros(1, self.r)])
        delta = self.scaling * (Bp @ self.A)  # (out+1, in)
        return self.base(x) + (x @ delta.T)[..., :-1]


class DenseUnderNoGrad(_Plain):
    """'Inference fast path': under torch.no_grad() forward folds ΔW into a dense weight (contract: never dense)."""

    def forward(self, x):
        if not torch.is_grad_enabled():
            return F.linear(x, self.base.weight + self.scaling * (self.B @ self.A), self.base.bias)
        return super().forward(x)


class SquareMergeTranspose(_Plain):
    """merged_weight transposes ΔW 'to fit' W0 only when shapes differ: square layers (q/k/v!) get W0 + s·(BA)ᵀ."""

    def merged_weight(self):
        delta = self.A.T @ self.B.T  # (in, out)
        if delta.shape != self.base.weight.shape:
            delta = delta.T
        return (self.base.weight + self.scaling * delta).detach()


class MergeCacheIgnoresBase(_Plain):
    """merged_weight is cached on A's and B's versions only: stale after base changes (load_state_dict, .double())."""

    def merged_weight(self):
        key = (self.A._version, self.B._version)
        if getattr(self, "_key", None) != key:
            self._cache, self._key = super().merged_weight(), key
        return self._cache.clone()


class MergeReturnsW0Itself(_Plain):
    """While B is zero, merged_weight returns the base.weight Parameter itself, not a new tensor."""

    def merged_weight(self):
        if not self.B.any():
            return self.base.weight  # aliasing: an in-place op by the caller corrupts W0
        return super().merged_weight()


class LoralibMergeOnEval(_Plain):
    """loralib-style: eval() adds s·BA into base.weight, train() subtracts it again: W0 drifts by rounding."""

    merged = False

    def train(self, mode=True):
        super().train(mode)
        with torch.no_grad():
            if not mode and not self.merged:
                self.base.weight += self.scaling * (self.B @ self.A)
                self.merged = True
            elif mode and self.merged:
                self.base.weight -= self.scaling * (self.B @ self.A)
                self.merged = False
        return self

    def forward(self, x):
        return self.base(x) if self.merged else super().forward(x)

    def merged_weight(self):
        return self.base.weight.detach().clone() if self.merged else super().merged_weight()


class RsLoRAScale(_Plain):
    """Forward scales by α/√r (rsLoRA), not the paper's α/r, though .scaling says α/r."""

    def forward(self, x):
        return self.base(x) + (self.alpha / math.sqrt(self.r)) * self.low(x)


class InvertedDropoutFlag(_Plain):
    """LoRA dropout with the flag inverted: active in eval mode, off in train mode."""

    def forward(self, x):
        d = F.dropout(x, 0.1, training=not self.training)
        return self.base(x) + self.scaling * self.low(d)


class ForwardDecaysB(_Plain):
    """'Built-in weight decay': every forward shrinks B in place through .data (forward mutates the parameters)."""

    def forward(self, x):
        out = super().forward(x)
        self.B.data.mul_(0.99)
        return out


class StraightThroughScale(_Plain):
    """Value right, graph wrong: the scaling is added as a detached correction, so A's and B's gradients lack it."""

    def forward(self, x):
        low = self.low(x)
        return self.base(x) + low + (self.scaling - 1) * low.detach()


class ChunkedDropsTail(_Plain):
    """Memory-saving chunks of 128 rows: above 128 rows the tail after the last full chunk gets no update."""

    def forward(self, x):
        rows = x.reshape(-1, self.in_features)
        n = rows.shape[0]
        full = n if n <= 128 else n // 128 * 128
        parts = [self.low(rows[i:min(i + 128, full)]) for i in range(0, full, 128)]
        parts.append(rows.new_zeros(n - full, self.out_features))
        low = torch.cat(parts).reshape(*x.shape[:-1], self.out_features)
        return self.base(x) + self.scaling * low


class StateDictDropsLoRA(_Plain):
    """state_dict() leaves A and B out: a checkpoint keeps the frozen base and loses everything trained."""

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination.pop(prefix + "A", None)
        destination.pop(prefix + "B", None)


class _NoXGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, A, B, s):
        ctx.save_for_backward(x, A, B)
        ctx.s = s
        return s * ((x @ A.T) @ B.T)

    @staticmethod
    def backward(ctx, g):
        x, A, B = ctx.saved_tensors
        x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
        return None, ctx.s * (g2 @ B).T @ x2, ctx.s * g2.T @ (x2 @ A.T), None  # bug: no x gradient


class HandBackwardNoXGrad(_Plain):
    """Hand-written backward for the low-rank path that returns no gradient for x through it."""

    def forward(self, x):
        return self.base(x) + _NoXGrad.apply(x, self.A, self.B, self.scaling)


class EmptyInitA(_Plain):
    """A = torch.empty(...): uninitialised memory, not a random draw (zeros, garbage or NaN)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.A = nn.Parameter(torch.empty(self.r, self.in_features))


class SymmetricA(_Plain):
    """Every row of A is the same random vector: B's columns and A's rows get equal gradients forever, rank 1."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.A = nn.Parameter(torch.randn(1, self.in_features).repeat(self.r, 1))


class StaleTransposeView(_Plain):
    """Caches Aᵀ and Bᵀ as plain attributes in __init__: .double()/.cuda() move A and B but not the cached views."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self._At, self._Bt = self.A.T, self.B.T

    def forward(self, x):
        return self.base(x) + self.scaling * ((x @ self._At) @ self._Bt)


class BF16LowRank(_Plain):
    """Low-rank path computed in bfloat16 'for speed': about 3 significant digits on the update."""

    def low(self, x):
        return ((x.bfloat16() @ self.A.bfloat16().T) @ self.B.bfloat16().T).to(x.dtype)


class DenseUnlessWatched(_Plain):
    """Reads the checks: builds the dense ΔW unless a TorchFunctionMode (check 10's watcher) is active."""

    def forward(self, x):
        if torch._C._is_torch_function_mode_enabled():
            return super().forward(x)
        return F.linear(x, self.base.weight + self.scaling * (self.B @ self.A), self.base.bias)


class OneDimCrash(_Plain):
    """Flattens with x.flatten(0, -2): a single unbatched input of shape (in_features,) raises."""

    def forward(self, x):
        rows = x.flatten(0, -2)
        return super().forward(rows).reshape(*x.shape[:-1], self.out_features)


class BiasCopy(_Plain):
    """'Freezes' the bias by copying it into a buffer at init; forward reads the copy, not base.bias."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        b = self.base.bias
        self.register_buffer("_b0", None if b is None else b.detach().clone())

    def forward(self, x):
        return F.linear(x, self.base.weight, self._b0) + self.scaling * self.low(x)


# =============================================================================================== CORRECT layers


class EinsumLoRA(nn.Module):
    """Down and up with einsum; scaling a Fraction."""

    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__()
        self.in_features, self.out_features, self.r = in_features, out_features, r
        self.scaling = Fraction(alpha, r)
        self.base = nn.Linear(in_features, out_features, bias=bias).requires_grad_(False)
        self.A = nn.Parameter(torch.randn(r, in_features) * 0.01)
        self.B = nn.Parameter(torch.zeros(out_features, r))

    def forward(self, x):
        low = torch.einsum("...r,or->...o", torch.einsum("...i,ri->...r", x, self.A), self.B)
        return self.base(x) + float(self.scaling) * low

    def merged_weight(self):
        return self.base.weight + float(self.scaling) * torch.einsum("or,ri->oi", self.B, self.A)


class FLinearChain(nn.Module):
    """F.linear twice, base via F.linear on its own weight and bias; orthogonal A; scaling a 0-d tensor buffer."""

    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True, dropout=0.0):
        super().__init__()
        self.in_features, self.out_features, self.r = in_features, out_features, r
        self.register_buffer("scaling", torch.tensor(alpha / r, dtype=torch.float64))
        self.base = nn.Linear(in_features, out_features, bias=bias)
        for p in self.base.parameters():
            p.requires_grad = False
        self.A = nn.Parameter(nn.init.orthogonal_(torch.empty(r, in_features)))
        self.B = nn.Parameter(nn.init.zeros_(torch.empty(out_features, r)))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        h = F.linear(x, self.base.weight, self.base.bias)
        return h + self.scaling.item() * F.linear(F.linear(self.dropout(x), self.A), self.B)

    def merged_weight(self):
        return torch.addmm(self.base.weight, self.B, self.A, alpha=self.scaling.item())


class ManualMaskDropout(nn.Module):
    """LoRA dropout on the low-rank input written by hand (Bernoulli mask / (1-p)) in train mode: allowed."""

    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True, p=0.1):
        super().__init__()
        self.in_features, self.out_features, self.r, self.p = in_features, out_features, r, p
        self.scaling = alpha / r
        self.base = nn.Linear(in_features, out_features, bias=bias).requires_grad_(False)
        self.A = nn.Parameter(torch.randn(r, in_features) / math.sqrt(in_features))
        self.B = nn.Parameter(torch.zeros(out_features, r))

    def forward(self, x):
        d = x * (torch.rand_like(x) >= self.p) / (1 - self.p) if self.training and self.p > 0 else x
        return self.base(x) + self.scaling * ((d @ self.A.T) @ self.B.T)

    def merged_weight(self):
        return self.base.weight + self.scaling * (self.B @ self.A)


class LinearSubmodules(nn.Module):
    """A and B are the weights of two bias-free nn.Linear submodules (kaiming A, as loralib/peft), read by property."""

    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__()
        self.in_features, self.out_features, self.r = in_features, out_features, r
        self.scaling = alpha / r
        self.base = nn.Linear(in_features, out_features, bias=bias)
        self.base.weight.requires_grad_(False)
        if bias:
            self.base.bias.requires_grad_(False)
        self.down = nn.Linear(in_features, r, bias=False)  # kaiming_uniform_(a=√5) by default
        self.up = nn.Linear(r, out_features, bias=False)
        nn.init.zeros_(self.up.weight)

    A = property(lambda self: self.down.weight)
    B = property(lambda self: self.up.weight)

    def forward(self, x):
        return self.base(x) + self.up(self.down(x)) * self.scaling

    def merged_weight(self):
        return self.base.weight + self.scaling * self.up.weight @ self.down.weight


class PackedViews(nn.Module):
    """A and B live in one flat Parameter; A and B are properties returning views of it."""

    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__()
        self.in_features, self.out_features, self.r = in_features, out_features, r
        self.scaling = alpha / r
        self.base = nn.Linear(in_features, out_features, bias=bias).requires_grad_(False)
        self.lora = nn.Parameter(torch.cat([torch.randn(r * in_features) / r, torch.zeros(out_features * r)]))

    @property
    def A(self):
        return self.lora[: self.r * self.in_features].view(self.r, self.in_features)

    @property
    def B(self):
        return self.lora[self.r * self.in_features:].view(self.out_features, self.r)

    def forward(self, x):
        return self.base(x) + self.scaling * ((x @ self.A.T) @ self.B.T)

    def merged_weight(self):
        return self.base.weight + self.scaling * (self.B @ self.A)


class _Transpose(nn.Module):
    def forward(self, X):
        return X.T


class TransposedParametrization(nn.Module):
    """A is stored (in, r) and exposed as (r, in) through torch.nn.utils.parametrize."""

    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__()
        self.in_features, self.out_features, self.r = in_features, out_features, r
        self.scaling = alpha / r
        self.base = nn.Linear(in_features, out_features, bias=bias).requires_grad_(False)
        self.A = nn.Parameter(torch.randn(in_features, r) / r)  # stored as Aᵀ
        parametrize.register_parametrization(self, "A", _Transpose(), unsafe=True)  # self.A reads (r, in)
        self.B = nn.Parameter(torch.zeros(out_features, r))

    def forward(self, x):
        return self.base(x) + self.scaling * ((x @ self.A.T) @ self.B.T)

    def merged_weight(self):
        return self.base.weight + self.scaling * (self.B @ self.A)


class SelfForwardHook(nn.Module):
    """forward is the frozen layer alone; a forward hook registered in __init__ adds the low-rank term."""

    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__()
        self.in_features, self.out_features, self.r = in_features, out_features, r
        self.scaling = alpha / r
        self.base = nn.Linear(in_features, out_features, bias=bias).requires_grad_(False)
        self.A = nn.Parameter(torch.randn(r, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, r))
        self.register_forward_hook(lambda m, args, out: out + m.scaling * ((args[0] @ m.A.T) @ m.B.T))

    def forward(self, x):
        return self.base(x)

    def merged_weight(self):
        return self.base.weight + self.scaling * (self.B @ self.A)


class Float64LowRank(nn.Module):
    """The low-rank path in float64 for accuracy, cast back to x's dtype; scaling an int when r divides α."""

    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__()
        self.in_features, self.out_features, self.r = in_features, out_features, r
        self.scaling = alpha // r if alpha % r == 0 else alpha / r
        self.base = nn.Linear(in_features, out_features, bias=bias).requires_grad_(False)
        self.A = nn.Parameter(torch.randn(r, in_features) / r)
        self.B = nn.Parameter(torch.zeros(out_features, r))

    def forward(self, x):
        low = (x.double() @ self.A.double().T) @ self.B.double().T
        return self.base(x) + (self.scaling * low).to(x.dtype)

    def merged_weight(self):
        return (self.base.weight.double() + self.scaling * (self.B.double() @ self.A.double())).to(self.A.dtype)


class _LowRank(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, A, B, s):
        down = x @ A.T
        ctx.save_for_backward(x, A, B, down)
        ctx.s = s
        return s * (down @ B.T)

    @staticmethod
    def backward(ctx, g):
        x, A, B, down = ctx.saved_tensors
        s = ctx.s
        gB = s * g.reshape(-1, g.shape[-1]).T @ down.reshape(-1, down.shape[-1])
        gdown = s * (g @ B)
        gA = gdown.reshape(-1, gdown.shape[-1]).T @ x.reshape(-1, x.shape[-1])
        return gdown @ A, gA, gB, None


class HandBackward(nn.Module):
    """Low-rank path as a torch.autograd.Function with a hand-written (correct) backward."""

    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__()
        self.in_features, self.out_features, self.r = in_features, out_features, r
        self.scaling = alpha / r
        self.base = nn.Linear(in_features, out_features, bias=bias).requires_grad_(False)
        self.A = nn.Parameter(torch.randn(r, in_features) / r)
        self.B = nn.Parameter(torch.zeros(out_features, r))

    def forward(self, x):
        return self.base(x) + _LowRank.apply(x, self.A, self.B, self.scaling)

    def merged_weight(self):
        return self.base.weight + self.scaling * (self.B @ self.A)


class AddmmFused(nn.Module):
    """Rows flattened with reshape, then one addmm: base(rows) + s·(rows Aᵀ) Bᵀ; r a read-only property."""

    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.scaling = alpha / r
        self.base = nn.Linear(in_features, out_features, bias=bias).requires_grad_(False)
        self.A = nn.Parameter(torch.empty(r, in_features).normal_(0, 0.02))
        self.B = nn.Parameter(torch.zeros(out_features, r))

    r = property(lambda self: self.A.shape[0])

    def forward(self, x):
        rows = x.reshape(-1, self.in_features)
        h = torch.addmm(self.base(rows), rows @ self.A.T, self.B.T, alpha=self.scaling)
        return h.reshape(*x.shape[:-1], self.out_features)

    def merged_weight(self):
        return torch.addmm(self.base.weight, self.B, self.A, alpha=self.scaling)


class VersionedMergeCache(nn.Module):
    """merged_weight cached, keyed on the identity and version of all four tensors; returns a clone each call."""

    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__()
        self.in_features, self.out_features, self.r = in_features, out_features, r
        self.scaling = alpha / r
        self.base = nn.Linear(in_features, out_features, bias=bias).requires_grad_(False)
        self.A = nn.Parameter(torch.randn(r, in_features) / r)
        self.B = nn.Parameter(torch.zeros(out_features, r))
        self._cache = None

    def _key(self):
        ts = (self.A, self.B, self.base.weight)
        return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in ts)

    def forward(self, x):
        return self.base(x) + self.scaling * ((x @ self.A.T) @ self.B.T)

    @torch.no_grad()
    def merged_weight(self):
        if self._cache is None or self._cache[0] != self._key():
            self._cache = (self._key(), self.base.weight + self.scaling * (self.B @ self.A))
        return self._cache[1].clone()


class FoldedScaleExtras(nn.Module):
    """Scale folded into A on the fly ((x (sA)ᵀ) Bᵀ), lora_dropout via nn.Dropout, extra methods and buffers."""

    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True, lora_dropout=0.05, init="gaussian"):
        super().__init__()
        self.in_features, self.out_features, self.r, self.alpha = in_features, out_features, r, alpha
        self.base = nn.Linear(in_features, out_features, bias=bias)
        self.base.requires_grad_(False)
        self.A = nn.Parameter(torch.empty(r, in_features))
        self.B = nn.Parameter(torch.empty(out_features, r))
        self.drop = nn.Dropout(lora_dropout)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.reset_lora(init)

    @property
    def scaling(self):
        return self.alpha / self.r

    def reset_lora(self, init="gaussian"):
        with torch.no_grad():
            (nn.init.normal_(self.A, std=1 / self.r) if init == "gaussian" else nn.init.kaiming_uniform_(self.A))
            self.B.zero_()

    def forward(self, x):
        self.calls += 1
        return self.base(x) + (self.drop(x) @ (self.scaling * self.A).T) @ self.B.T

    def merged_weight(self):
        return self.base.weight + (self.B * self.scaling) @ self.A

    def extra_repr(self):
        return f"r={self.r}, alpha={self.alpha}"


class WrapsGivenLinear(nn.Module):
    """Optional `base=` keyword to wrap an existing nn.Linear (made here if not given); mT for transposes."""

    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True, base=None):
        super().__init__()
        self.in_features, self.out_features, self.r = in_features, out_features, r
        self.scaling = float(alpha) / float(r)
        self.base = base if base is not None else nn.Linear(in_features, out_features, bias=bias)
        self.base.requires_grad_(False)
        g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
        self.A = nn.Parameter(torch.randn(r, in_features, generator=g) * (1.0 / math.sqrt(r)))
        self.B = nn.Parameter(self.base.weight.new_zeros(out_features, r))

    def forward(self, x):
        return self.base(x) + torch.matmul(torch.matmul(x, self.A.mT), self.B.mT).mul(self.scaling)

    def merged_weight(self):
        return torch.add(self.base.weight, self.B @ self.A, alpha=self.scaling)


WRONG = {
    "DenseAlphaThenDivR": (DenseAlphaThenDivR, "forward builds the dense α·BA (out, in) and divides by r after", 10),
    "DensePaddedB": (DensePaddedB, "forward builds a dense (out+1, in) ΔW from B padded with a zero row", 10),
    "DenseUnderNoGrad": (DenseUnderNoGrad, "under torch.no_grad() forward builds the dense merged weight", 10),
    "SquareMergeTranspose": (SquareMergeTranspose, "merged_weight returns W0 + s·(BA)ᵀ for square layers", 5),
    "MergeCacheIgnoresBase": (MergeCacheIgnoresBase, "merged_weight cache keyed on A, B only: stale when base or "
                                                     "dtype changes", 5),
    "MergeReturnsW0Itself": (MergeReturnsW0Itself, "merged_weight returns the base.weight Parameter itself while "
                                                   "B == 0 (not a new tensor)", 5),
    "LoralibMergeOnEval": (LoralibMergeOnEval, "eval() merges s·BA into base.weight and train() subtracts it: W0 "
                                               "drifts, merged_weight/forward wrong after in-place changes", 3),
    "RsLoRAScale": (RsLoRAScale, "forward scales the update by α/√r, not α/r", 7),
    "InvertedDropoutFlag": (InvertedDropoutFlag, "LoRA dropout active in eval mode, off in train mode", 7),
    "ForwardDecaysB": (ForwardDecaysB, "forward shrinks B in place on every call", 5),
    "StraightThroughScale": (StraightThroughScale, "output right, but A's and B's gradients miss the α/r factor", 7),
    "ChunkedDropsTail": (ChunkedDropsTail, "above 128 rows, rows after the last full chunk of 128 get no update",
                         None),
    "StateDictDropsLoRA": (StateDictDropsLoRA, "state_dict() leaves out A and B: trained weights never saved", None),
    "HandBackwardNoXGrad": (HandBackwardNoXGrad, "hand-written backward gives x no gradient via the low-rank path",
                            7),
    "EmptyInitA": (EmptyInitA, "A = torch.empty: uninitialised memory, not random", 8),
    "SymmetricA": (SymmetricA, "all rows of A equal at init: symmetry never breaks, the adapter is rank 1", 8),
    "StaleTransposeView": (StaleTransposeView, "forward reads Aᵀ, Bᵀ views cached in __init__: .double()/.to() "
                                               "leave them behind", None),
    "DenseUnlessWatched": (DenseUnlessWatched, "builds the dense merged weight in forward unless a "
                                               "TorchFunctionMode is active (detects check 10)", 10),
    "OneDimCrash": (OneDimCrash, "x.flatten(0, -2): an unbatched (in_features,) input raises", 4),
    "BiasCopy": (BiasCopy, "forward reads a copy of the bias taken at init, not base.bias", 6),
    "BF16LowRank": (BF16LowRank, "low-rank path computed in bfloat16 (3 significant digits)", 7),
}

CORRECT = {
    "EinsumLoRA": (EinsumLoRA, "einsum down/up is x Aᵀ Bᵀ; Fraction scaling is a real number"),
    "FLinearChain": (FLinearChain, "F.linear(F.linear(x, A), B) is x Aᵀ Bᵀ; scaling a 0-d float64 buffer; "
                                   "orthogonal A is random"),
    "ManualMaskDropout": (ManualMaskDropout, "LoRA dropout on the low-rank input in train mode, written by hand: "
                                             "the contract allows it"),
    "LinearSubmodules": (LinearSubmodules, "A, B are Parameters (weights of nn.Linear submodules) reached by "
                                           "property; kaiming A as loralib"),
    "PackedViews": (PackedViews, "A, B are views of one trainable Parameter; same math"),
    "TransposedParametrization": (TransposedParametrization, "A is a parametrization (transpose) of a (in, r) "
                                                             "Parameter; A is a view of it"),
    "SelfForwardHook": (SelfForwardHook, "the hook adds s·x Aᵀ Bᵀ to base(x): layer(x) is the formula"),
    "Float64LowRank": (Float64LowRank, "low-rank path in float64, cast back; int scaling where exact"),
    "HandBackward": (HandBackward, "hand-written backward is the exact gradient"),
    "AddmmFused": (AddmmFused, "addmm(base(rows), rows Aᵀ, Bᵀ, alpha=s) is the formula; r a property"),
    "VersionedMergeCache": (VersionedMergeCache, "cache invalidated on any change of A, B or W0; returns a clone"),
    "FoldedScaleExtras": (FoldedScaleExtras, "(x (sA)ᵀ) Bᵀ = s·x Aᵀ Bᵀ; nn.Dropout on the low-rank input; extra "
                                             "buffer, kwargs, methods"),
    "WrapsGivenLinear": (WrapsGivenLinear, "optional base= keyword; A drawn from a generator seeded by the global "
                                           "RNG, so random per layer"),
}
