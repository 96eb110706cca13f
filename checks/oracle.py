"""The oracle: drawn configurations, and what the LoRA formula says a layer must do with its own tensors.

The checks judge behaviour, not code. For a drawn configuration (sizes, rank, α, bias, input rank, layout, mode)
they set A, B, base.weight and base.bias in place, through the interface, to random values; then they compare
what the layer does with what §4.1's formula, h = x W0ᵀ + b + (α/r)·x Aᵀ Bᵀ, does with those same tensors in
float64: the output, and the gradients with respect to x, A and B.

The draws are seeded and sorted from small to large, so the first failure a check reports is the smallest
configuration that shows it (a cheap stand-in for hypothesis's shrinking, which the tests use; importing
hypothesis here would cost the learner's wait more than every check together).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from checks.probe import Mistake, call_text, forward, make, parts

_randn = torch.randn


@dataclass(frozen=True)
class Config:
    in_features: int
    out_features: int
    r: int
    alpha: int
    bias: bool
    lead: tuple  # the input's leading dimensions: x is (*lead, in_features)
    train: bool  # train mode, with any dropout switched off while the layer is compared with the formula
    contiguous: bool

    @property
    def rows(self) -> int:
        return math.prod(self.lead)

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def build(self, cls):
        layer = make(cls, self.in_features, self.out_features, r=self.r, alpha=self.alpha, bias=self.bias)
        layer.train(self.train)
        return layer

    def input(self, requires_grad: bool = False) -> torch.Tensor:
        """x of shape (*lead, in): when not contiguous, strided so that neither .view nor raw storage reads work."""
        x = laid_out(_randn(*self.lead, self.in_features), self.contiguous)
        return x.requires_grad_(requires_grad) if requires_grad else x

    def __str__(self) -> str:
        layout = "" if self.contiguous else " non-contiguous"
        mode = "train mode (dropout off)" if self.train else "eval mode"
        return (f"{call_text(self.in_features, self.out_features, self.r, self.alpha, self.bias)}, "
                f"{len(self.lead) + 1}-D{layout} input {(*self.lead, self.in_features)}, {mode}")


def laid_out(x: torch.Tensor, contiguous: bool) -> torch.Tensor:
    """A new tensor with x's values; when not contiguous, strided so that neither .view nor raw storage reads work:
    two leading dimensions swapped (x.view(-1, in) raises on it), (rows, in) as the transpose of an (in, rows)
    tensor, or one row as every other number of a longer one."""
    if contiguous:
        return x.clone()
    if x.dim() >= 3:
        return x.transpose(0, 1).contiguous().transpose(0, 1)
    if x.dim() == 2 and x.shape[0] > 1:
        return x.T.contiguous().T
    wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
    wide[..., ::2] = x
    return wide[..., ::2]


def configs(count: int = 24, seed: int = 2106) -> list[Config]:
    """Seeded draws covering in ≠ out up to 64, r from 1 to min(in, out) (r > 4 included), r ∤ α, bias on and
    off, 2-D to 4-D input, batches over 16 rows, strided input, train and eval mode; then a square layer and a
    batch over 128 rows; smallest first."""
    rng = random.Random(seed)
    drawn = []
    for i in range(count):
        n_in = rng.randint(2, 64)
        n_out = rng.choice([k for k in range(2, 65) if k != n_in])
        low = min(n_in, n_out)
        if i % 6 == 0:
            r = low  # full rank
        elif i % 3 == 0 and low > 4:
            r = rng.randint(5, low)
        else:
            r = rng.randint(1, min(low, 4))
        alpha = rng.randint(1, 32)
        if i % 2 == 0 and r > 1 and alpha % r == 0:
            alpha += 1  # r does not divide α
        ndim = 2 + i % 3
        if ndim == 2:
            lead = (rng.choice([1, 3, 7, 17, 33]),)
        elif ndim == 3:
            lead = (rng.randint(1, 4), rng.randint(2, 9))
        else:
            lead = (2, rng.randint(1, 3), rng.randint(2, 6))
        drawn.append(Config(n_in, n_out, r, alpha, bias=i % 2 == 1, lead=lead, train=(i // 2) % 2 == 0,
                            contiguous=i % 4 != 1))
    drawn += [Config(6, 6, 2, 5, bias=True, lead=(4,), train=False, contiguous=True),  # square, as Wq and Wv are
              Config(12, 7, 3, 4, bias=False, lead=(3, 70), train=True, contiguous=False)]  # over 128 rows
    return sorted(drawn, key=lambda c: (c.in_features * c.out_features + c.rows * c.in_features, c.r))


def randomise(layer, scale: float = 0.5) -> None:
    """Give A, B, base.weight and base.bias random values in place, through the interface."""
    p = parts(layer)
    with torch.no_grad():
        for t in (p.A, p.B, p.base.weight, p.base.bias):
            if t is not None:
                t.copy_(_randn(t.shape) * scale)


class NoDropout(TorchFunctionMode):
    """Inside it, every dropout is the identity: a layer in train mode is then compared with the formula exactly.

    LoRA dropout on the low-rank input is a correct choice (loralib, peft); what train mode must not change is
    anything else. Catches nn.Dropout and F.dropout alike, since both go through torch's function dispatch."""

    _DROPOUTS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
                 torch.dropout, torch.alpha_dropout, torch.feature_dropout, torch.feature_alpha_dropout}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._DROPOUTS:
            return args[0] if args else kwargs["input"]
        if func is torch.native_dropout:  # (output, mask): everything kept
            kept = args[0] if args else kwargs["input"]
            return kept, torch.ones_like(kept, dtype=torch.bool)
        return func(*args, **kwargs)


@dataclass
class Expected:
    out: torch.Tensor  # float64
    grad_x: torch.Tensor
    grad_A: torch.Tensor
    grad_B: torch.Tensor


def formula(x, W0, b, A, B, s: float, upstream) -> Expected:
    """h = x W0ᵀ + b + s·x Aᵀ Bᵀ in float64, and the gradients of sum(h · upstream) for x, A and B."""
    xd, Ad, Bd = (t.detach().double().requires_grad_(True) for t in (x, A, B))
    h = xd @ W0.detach().double().T + s * ((xd @ Ad.T) @ Bd.T)
    if b is not None:
        h = h + b.detach().double()
    (h * upstream.double()).sum().backward()
    return Expected(h.detach(), xd.grad, Ad.grad, Bd.grad)


def run(layer, x, train: bool) -> torch.Tensor:
    """layer(x), with dropout switched off in train mode."""
    if train:
        with NoDropout():
            return forward(layer, x)
    return forward(layer, x)


def gap(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest difference, relative to the size of the expected values (float32 against float64)."""
    if got.shape != want.shape:
        return math.inf
    diff = (got.detach().double() - want).abs()
    if diff.numel() == 0:
        return 0.0
    if torch.isnan(diff).any():
        return math.inf
    return diff.max().item() / (1.0 + want.abs().max().item())


TOLERANCE = 1e-4


def leaf_grads(layer, tensors, expected) -> dict:
    """What the gradients of the parameters behind `tensors` (A and B) must be, given theirs (`expected`).

    A and B may be parameters, or views of parameters behind properties (a parametrization, one flat parameter
    holding both): the expected gradients are then carried back through those views and summed per parameter.
    Returns {parameter: (names, expected gradient)}."""
    leaves = [q for q in layer.parameters() if q.requires_grad]
    wanted: dict = {}
    for (name, t), e in zip(tensors, expected):
        if t.is_leaf:
            pairs = [(t, e)]
        else:
            grads = torch.autograd.grad(t, leaves, e.to(t.dtype), allow_unused=True, retain_graph=True)
            pairs = [(q, g.double()) for q, g in zip(leaves, grads) if g is not None]
        for q, g in pairs:
            names, total = wanted.get(q, ((), None))
            wanted[q] = ((*names, name), g if total is None else total + g)
    return wanted


def param_grad_gaps(layer, tensors, expected) -> list:
    """[(names, gap or None when no gradient reached it)] for each parameter behind A and B."""
    found = []
    for q, (names, want) in leaf_grads(layer, tensors, expected).items():
        found.append((" and ".join(names), None if q.grad is None else gap(q.grad, want)))
    if not found:
        found.append((" and ".join(name for name, _ in tensors), None))
    return found


def reached(layer, t: torch.Tensor) -> bool:
    """Whether a non-zero gradient reached the parameter(s) behind `t` (A or B, or a view of a parameter)."""
    sources = leaf_grads(layer, [("t", t)], [torch.ones(t.shape, dtype=torch.float64)])
    return bool(sources) and all(q.grad is not None and q.grad.abs().max().item() > 0 for q in sources)


def fail(config: Config, message: str, hint: str) -> Mistake:
    return Mistake(f"at {config}: {message}", hint)
