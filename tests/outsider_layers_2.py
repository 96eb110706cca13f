"""A second outsider's layers, written from scratch against the stub's contract (torch and stdlib only).

WRONG: each breaks the contract or §4.1's method in one way; CORRECT: unusual but within the contract.
WRONG = {name: (class, what is wrong, the check id expected to catch it, or None when no check probes it)}
CORRECT = {name: (class, why it is still correct)}
"""
import math
from fractions import Fraction

import torch
from torch import nn
from torch.nn import functional as F


class _Plain(nn.Module):
    """Shared constructor for brevity: the contract's __init__ (A Gaussian / r, B zero, base frozen)."""

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
        with torch.no_grad():
            return self.base.weight + self.scaling * (self.B @ self.A)


# ================================================================================================ wrong layers


class NoGradIntDivScaling(_Plain):
    def forward(self, x):
        if not torch.is_grad_enabled():  # "inference fast path", with a typo: α // r
            return self.base(x) + (self.alpha // self.r) * self.low(x)
        return super().forward(x)


class DenseAlphaBA(_Plain):
    def forward(self, x):
        delta = self.alpha * self.B @ self.A  # (α·B)@A: dense (out, in) ΔW, scaled by α not α/r
        return self.base(x) + (x @ delta.T) / self.r


class DenseForBigBatch(_Plain):
    def forward(self, x):
        if x.numel() // self.in_features >= 64:  # "one GEMM is faster for big batches"
            return F.linear(x, self.base.weight + self.scaling * (self.B @ self.A), self.base.bias)
        return super().forward(x)


class MergedReusesOutBuffer(_Plain):
    _buf = None

    def merged_weight(self):
        W0 = self.base.weight
        if self._buf is None or self._buf.shape != W0.shape or self._buf.dtype != W0.dtype:
            self._buf = torch.empty_like(W0)
        with torch.no_grad():
            torch.add(W0, self.B @ self.A, alpha=self.scaling, out=self._buf)
        return self._buf  # the same tensor every call: an earlier result changes under its holder


class TrainForwardRenormsA(_Plain):
    def forward(self, x):
        if self.training:  # max-norm constraint on A's rows, written into the parameter by forward
            with torch.no_grad():
                self.A.div_(self.A.norm(dim=1, keepdim=True).clamp_min(1.0))
        return super().forward(x)


class HandDropoutDetachesX(_Plain):
    p = 0.1

    def forward(self, x):
        h = self.base(x)
        if self.training:
            x = x.detach() * ((torch.rand_like(x) >= self.p).to(x.dtype) / (1 - self.p))  # .detach(): bug
        return h + self.scaling * self.low(x)


class UnscaledDropout(_Plain):
    p = 0.05

    def forward(self, x):
        h = self.base(x)
        if self.training:
            x = x * (torch.rand_like(x) >= self.p).to(x.dtype)  # no 1/(1-p): train and eval disagree
        return h + self.scaling * self.low(x)


class EvalCacheClearedOnTrain(_Plain):
    _cache = None

    def train(self, mode=True):
        self._cache = None
        return super().train(mode)

    def forward(self, x):
        if self.training:
            return super().forward(x)
        if self._cache is None or self._cache[0].dtype != x.dtype:  # stale once A, B change in eval mode
            self._cache = (self.A.detach().T.contiguous(), self.B.detach().T.contiguous())
        At, Bt = self._cache
        return self.base(x) + self.scaling * ((x @ At) @ Bt)


class CastsInputToFloat32(_Plain):
    def forward(self, x):
        x = x.float()  # breaks every non-float32 layer (float64, half, bf16)
        return super().forward(x)


class ZeroBiasNotRegistered(_Plain):
    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__(in_features, out_features, r, alpha, bias)
        self.zero_bias = None if bias else torch.zeros(out_features)  # plain tensor: .to()/.cuda() miss it

    def forward(self, x):
        b = self.base.bias if self.base.bias is not None else self.zero_bias
        return F.linear(x, self.base.weight, b) + self.scaling * self.low(x)


class FractionScaling(_Plain):
    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__(in_features, out_features, r, alpha, bias)
        self.scaling = Fraction(alpha, r)  # TypeError for a float α such as 16.0 or 0.5

    def forward(self, x):
        return self.base(x) + float(self.scaling) * self.low(x)

    def merged_weight(self):
        with torch.no_grad():
            return self.base.weight + float(self.scaling) * (self.B @ self.A)


class IntAlpha(_Plain):
    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__(in_features, out_features, r, int(alpha), bias)  # α = 0.5 becomes 0, 2.5 becomes 2


class AlphaZeroMeansDefault(_Plain):
    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__(in_features, out_features, r, alpha, bias)
        self.scaling = (alpha or r) / r  # α = 0 silently becomes scaling 1, not 0


class RandInitA(_Plain):
    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__(in_features, out_features, r, alpha, bias)
        self.A = nn.Parameter(torch.rand(r, in_features))  # rand, not randn: U[0,1), all positive, rows near-parallel


class NoGradReusesOutput(_Plain):
    _out = None

    def forward(self, x):
        h = super().forward(x)
        if torch.is_grad_enabled():
            return h
        if self._out is None or self._out.shape != h.shape or self._out.dtype != h.dtype:
            self._out = torch.empty_like(h)
        return self._out.copy_(h)  # under no_grad: y1 = layer(x1); y2 = layer(x2) overwrites y1


class EmptyBatchCrash(_Plain):
    def forward(self, x):
        rows = x.reshape(-1, self.in_features)
        h = self.base(rows) + self.scaling * self.low(rows)
        return h.reshape(*x.shape[:-1], -1)  # raises for a (0, in) batch


class LowRankFloat32NoCastBack(_Plain):
    def forward(self, x):  # "upcast for stability", never cast back: a bf16 layer returns float32
        low = (x.float() @ self.A.float().T) @ self.B.float().T
        return self.base(x) + self.scaling * low


class BStoredTransposed(_Plain):
    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__(in_features, out_features, r, alpha, bias)
        del self.B
        self.Bt = nn.Parameter(torch.zeros(r, out_features))  # state_dict has 'Bt' (r, out), not 'B' (out, r)

    @property
    def B(self):
        return self.Bt.T


class DropoutMaskOnCPU(_Plain):
    def forward(self, x):
        xd = x
        if self.training:  # torch.rand(x.shape) with no device=: a CPU mask, so the layer fails on CUDA
            xd = x * (torch.rand(x.shape) >= 0.1).to(x.dtype) / 0.9
        return self.base(x) + self.scaling * self.low(xd)


# ============================================================================================== correct layers


class EinsumLayer(_Plain):
    def forward(self, x):
        down = torch.einsum("...i,ri->...r", x, self.A)
        return self.base(x) + self.scaling * torch.einsum("...r,or->...o", down, self.B)


class ScalingBuffer(_Plain):
    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__(in_features, out_features, r, alpha, bias)
        del self.scaling
        self.register_buffer("scaling", torch.tensor(alpha / r))  # 0-d tensor, moves with .to()


class FractionScalingFloatSafe(_Plain):
    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__(in_features, out_features, r, alpha, bias)
        self.scaling = Fraction(alpha) / r  # exact; Fraction(float) is fine

    def forward(self, x):
        return self.base(x) + float(self.scaling) * self.low(x)

    def merged_weight(self):
        with torch.no_grad():
            return self.base.weight + float(self.scaling) * (self.B @ self.A)


class NNDropoutLowRank(_Plain):
    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True, dropout=0.1):
        super().__init__(in_features, out_features, r, alpha, bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.base(x) + self.scaling * self.low(self.drop(x))


class HandInvertedDropout(_Plain):
    p = 0.25

    def forward(self, x):
        xd = x
        if self.training:
            xd = x * ((torch.rand_like(x) >= self.p).to(x.dtype) / (1 - self.p))
        return self.base(x) + self.scaling * self.low(xd)


class HandInvertedDropoutP05(HandInvertedDropout):
    p = 0.05  # a common lora_dropout value


class HandInvertedDropoutP01(HandInvertedDropout):
    p = 0.01


class _LowRankFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, A, B, s):
        down = x @ A.T
        ctx.save_for_backward(x, A, B, down)
        ctx.s = s
        return s * (down @ B.T)

    @staticmethod
    def backward(ctx, g):
        x, A, B, down = ctx.saved_tensors
        gs = ctx.s * g
        g_down = gs @ B  # (..., r)
        gx = g_down @ A
        gA = g_down.reshape(-1, g_down.shape[-1]).T @ x.reshape(-1, x.shape[-1])
        gB = gs.reshape(-1, gs.shape[-1]).T @ down.reshape(-1, down.shape[-1])
        return gx, gA, gB, None


class CustomAutograd(_Plain):
    def forward(self, x):
        return self.base(x) + _LowRankFn.apply(x, self.A, self.B, float(self.scaling))


class MultiDot(_Plain):
    def forward(self, x):
        rows = x.reshape(-1, self.in_features)
        low = torch.linalg.multi_dot([rows, self.A.T, self.B.T])  # picks (x Aᵀ) Bᵀ: cheaper for every n
        return self.base(x) + self.scaling * low.reshape(*x.shape[:-1], self.out_features)


class OrthogonalInitA(_Plain):
    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__(in_features, out_features, r, alpha, bias)
        with torch.no_grad():
            nn.init.orthogonal_(self.A)


class FusedCatGEMM(_Plain):
    def forward(self, x):  # one GEMM for W0 and A together: [W0; A] is (out + r, in), never ΔW
        both = x @ torch.cat([self.base.weight, self.A], 0).T
        h, down = both[..., :self.out_features], both[..., self.out_features:]
        if self.base.bias is not None:
            h = h + self.base.bias
        return h + self.scaling * (down @ self.B.T)


class ChunkedRows(_Plain):
    def forward(self, x):
        rows = x.reshape(-1, self.in_features)
        out = torch.cat([super(ChunkedRows, self).forward(c) for c in rows.split(5)]) if rows.shape[0] else \
            super().forward(rows)
        return out.reshape(*x.shape[:-1], self.out_features)


class Float64LowRank(_Plain):
    def forward(self, x):
        low = (x.double() @ self.A.double().T) @ self.B.double().T
        return self.base(x) + (self.scaling * low).to(x.dtype)


class IntScalingWhenExact(_Plain):
    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__(in_features, out_features, r, alpha, bias)
        self.scaling = alpha // r if alpha % r == 0 else alpha / r  # int where exact: still a real number


class VersionKeyedCache(_Plain):
    _key = _cache = None

    def forward(self, x):
        A, B = self.A, self.B
        key = (A._version, B._version, A.data_ptr(), B.data_ptr(), A.dtype, torch.is_grad_enabled())
        if self.training or torch.is_grad_enabled() or key != self._key:
            self._key, self._cache = key, (A.T.contiguous(), B.T.contiguous())
        At, Bt = self._cache
        return self.base(x) + self.scaling * ((x @ At) @ Bt)


class KaimingExtras(_Plain):
    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True, *, init="kaiming", tag="q_proj"):
        super().__init__(in_features, out_features, r, alpha, bias)
        self.tag = tag
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        self.calls += 1  # a buffer, not a parameter: allowed
        return F.linear(F.linear(x, self.A), self.B, None).mul(self.scaling).add(self.base(x))

    def merged_weight(self):  # differentiable merge: a new tensor that keeps its graph
        return torch.addmm(self.base.weight, self.B, self.A, alpha=self.scaling)

    def extra_repr(self):
        return f"r={self.r}, scaling={self.scaling}, tag={self.tag}"


class TransposedCompute(_Plain):
    def forward(self, x):  # hᵀ = W0 xᵀ + s·B (A xᵀ): the output is a transposed (non-contiguous) view
        xt = x.reshape(-1, self.in_features).T
        ht = self.base.weight @ xt + self.scaling * (self.B @ (self.A @ xt))
        if self.base.bias is not None:
            ht = ht + self.base.bias[:, None]
        return ht.T.reshape(*x.shape[:-1], self.out_features)


WRONG = {
    "NoGradIntDivScaling": (NoGradIntDivScaling, "under torch.no_grad forward scales by α // r, not α/r", 7),
    "DenseAlphaBA": (DenseAlphaBA, "forward builds the dense (out, in) matrix α·BA (scaled by α, divided later)", 10),
    "DenseForBigBatch": (DenseForBigBatch, "forward builds dense W0 + (α/r)BA for batches of 64+ rows", 10),
    "MergedReusesOutBuffer": (MergedReusesOutBuffer,
                              "merged_weight returns the same cached tensor every call (not a new tensor)", 5),
    "TrainForwardRenormsA": (TrainForwardRenormsA, "forward writes into A (max-norm) in train mode", 5),
    "HandDropoutDetachesX": (HandDropoutDetachesX,
                             "train mode: LoRA dropout on x.detach(): x loses its gradient through BA", 7),
    "UnscaledDropout": (UnscaledDropout, "train mode: dropout without 1/(1-p): low-rank term 5% smaller in train", 7),
    "EvalCacheClearedOnTrain": (EvalCacheClearedOnTrain,
                                "eval-mode cache of Aᵀ, Bᵀ: stale if A or B change in eval (load_state_dict)", 5),
    "CastsInputToFloat32": (CastsInputToFloat32, "x.float() in forward: fails for any non-float32 layer", 1),
    "ZeroBiasNotRegistered": (ZeroBiasNotRegistered, "bias=False: a plain zeros tensor that .to() does not move", 1),
    "FractionScaling": (FractionScaling, "Fraction(alpha, r) raises TypeError for a float α", None),
    "IntAlpha": (IntAlpha, "int(alpha): a float α is truncated (0.5 -> 0, 2.5 -> 2)", None),
    "AlphaZeroMeansDefault": (AlphaZeroMeansDefault, "α = 0 gives scaling 1, not 0", None),
    "RandInitA": (RandInitA, "A ~ U[0,1) (torch.rand), not Gaussian: non-zero mean, near-parallel rows", 8),
    "NoGradReusesOutput": (NoGradReusesOutput, "under no_grad every call returns the same tensor, overwritten", None),
    "EmptyBatchCrash": (EmptyBatchCrash, "reshape(..., -1) raises on an empty (0, in) batch", None),
    "LowRankFloat32NoCastBack": (LowRankFloat32NoCastBack, "a bf16/half layer returns float32 output", None),
    "DropoutMaskOnCPU": (DropoutMaskOnCPU, "dropout mask made on the CPU (no device=): fails on CUDA", None),
    "BStoredTransposed": (BStoredTransposed, "B is a property over Parameter Bt (r, out): state_dict key/shape "
                          "break the contract's 'B = nn.Parameter (out, r)' (arguable: the kit allows views)", 1),
}

CORRECT = {
    "EinsumLayer": (EinsumLayer, "einsum down then up; ellipsis handles any leading dims"),
    "ScalingBuffer": (ScalingBuffer, "scaling as a 0-d tensor buffer: a real number, moves with .to()"),
    "FractionScalingFloatSafe": (FractionScalingFloatSafe, "scaling = Fraction(alpha)/r, works for float α too"),
    "NNDropoutLowRank": (NNDropoutLowRank, "nn.Dropout(0.1) on the low-rank input only, extra kwarg"),
    "HandInvertedDropout": (HandInvertedDropout, "hand-written inverted dropout (p=0.25) on the low-rank input"),
    "HandInvertedDropoutP05": (HandInvertedDropoutP05, "the same at p = 0.05"),
    "HandInvertedDropoutP01": (HandInvertedDropoutP01, "the same at p = 0.01"),
    "CustomAutograd": (CustomAutograd, "low-rank path as an autograd.Function with a correct backward"),
    "MultiDot": (MultiDot, "torch.linalg.multi_dot, which picks the low-rank order"),
    "OrthogonalInitA": (OrthogonalInitA, "A with orthogonal rows (random, from torch's generator)"),
    "FusedCatGEMM": (FusedCatGEMM, "one GEMM over [W0; A], then up through B; no ΔW"),
    "ChunkedRows": (ChunkedRows, "rows processed in chunks of 5"),
    "Float64LowRank": (Float64LowRank, "low-rank path in float64, cast back to x.dtype"),
    "IntScalingWhenExact": (IntScalingWhenExact, "scaling is an int when r divides α"),
    "VersionKeyedCache": (VersionKeyedCache, "inference cache of Aᵀ, Bᵀ keyed by version, pointer and dtype"),
    "KaimingExtras": (KaimingExtras, "Kaiming-uniform A (loralib), keyword-only extras, call-count buffer, "
                      "F.linear twice, differentiable addmm merge"),
    "TransposedCompute": (TransposedCompute, "computes hᵀ column-wise; returns a non-contiguous view"),
}
