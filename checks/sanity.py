"""The drill's sanity checks: 1–6 are the drill page's six, 7–11 close the gaps a broken layer slips through.

Each check takes the learner's class, builds fresh layers itself (several shapes, ranks, α, bias on and off)
and returns a short message on a pass or raises `Mistake(message, hint)`. Reference: LoRA §4.1,
h = W0 x + (α/r)·B A x, written batch-first as x W0ᵀ + b + (α/r)·x Aᵀ Bᵀ.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from checks.probe import Mistake, forward, make, parts, toy_run

# Bound before any learner code runs: a learner file that patches torch.allclose cannot fake a pass.
_equal, _allclose, _randn = torch.equal, torch.allclose, torch.randn

CHECKS = {}  # id -> (name, function), in the drill's order


def check(number: int, name: str):
    def register(fn):
        CHECKS[number] = (name, fn)
        return fn
    return register


def _max_abs(t: torch.Tensor) -> float:
    return t.detach().abs().max().item() if t.numel() else 0.0


def _randomise(p, scale=0.5):
    """Give A and B random non-zero values, so ΔW is visible in the output."""
    with torch.no_grad():
        p.A.copy_(_randn(p.A.shape) * scale)
        p.B.copy_(_randn(p.B.shape) * scale)


def _same_object(t, candidates) -> bool:
    return any(t is c for c in candidates)


@check(1, "only A and B train")
def only_a_and_b_train(cls) -> str:
    for bias in (True, False):
        layer = make(cls, 10, 6, r=2, alpha=4, bias=bias)
        p = parts(layer)
        params = dict(layer.named_parameters())
        for name, t in (("A", p.A), ("B", p.B)):
            if not _same_object(t, params.values()):
                raise Mistake(f"{name} is not a registered parameter of the layer, so an optimizer never sees it",
                              f"wrap it: self.{name} = nn.Parameter(...)")
            if not t.requires_grad:
                raise Mistake(f"{name} has requires_grad=False, so it never trains",
                              f"leave {name} trainable; freeze only self.base")
        lora = (p.A, p.B)
        extra = [n for n, t in params.items() if t.requires_grad and not _same_object(t, lora)]
        if extra:
            raise Mistake(f"besides A and B, these parameters train: {', '.join(extra)}",
                          "freeze the pretrained layer: self.base.requires_grad_(False)")
        trainable = sum(t.numel() for t in lora)
        if trainable != 2 * (10 + 6):
            raise Mistake(f"A and B hold {trainable} numbers; LoRALinear(10, 6, r=2) needs r·(in+out) = 32",
                          "A is (r, in_features) and B is (out_features, r)")
        if bias:
            names = [n for n, t in params.items() if t.requires_grad]
            frozen = [n for n, t in params.items() if not t.requires_grad]
            total = sum(t.numel() for t in params.values())
    return (f"trainable: {', '.join(names)} ({trainable} of {total} parameters at in=10, out=6, r=2); "
            f"frozen: {', '.join(frozen)}")


@check(2, "output equals the base at init")
def starts_at_base(cls) -> str:
    for bias in (True, False):
        layer = make(cls, 16, 12, r=4, alpha=8, bias=bias)
        layer.train()  # dropout on the frozen path would show here; LoRA dropout is harmless while B = 0
        p = parts(layer)
        x = _randn(5, 16)
        gap = _max_abs(forward(layer, x) - p.base(x))
        if gap > 1e-6:
            if _max_abs(p.B) > 0:
                raise Mistake(f"at init the output differs from base(x) by up to {gap:.3g}, because B is not zero "
                              f"(max |B| = {_max_abs(p.B):.3g}): the model would start away from the pretrained one",
                              "initialise B with torch.zeros(out_features, r) and A at random (§4.1)")
            raise Mistake(f"at init the output differs from base(x) by up to {gap:.3g}, though B is zero: "
                          "something else changes the frozen path (dropout on the base input?)",
                          "the frozen path is exactly self.base(x); apply any dropout to the low-rank input only")
    return "at init, layer(x) == base(x) (B = 0, so ΔW = BA = 0)"


@check(3, "base unchanged by training")
def base_stays_frozen(cls, trained=None, snapshot=None) -> str:
    """Also compares `trained.base.weight` with `snapshot` when given: the notebook's own toy run."""
    if trained is not None and snapshot is not None:
        moved = _max_abs(parts(trained).base.weight.detach() - snapshot)
        if moved > 0:
            raise Mistake(f"your toy run moved base.weight (max change {moved:.3g}) away from base_snapshot",
                          "freeze the pretrained layer: self.base.requires_grad_(False), and never write into it")
    run = toy_run(cls)
    p = parts(run.layer)
    for name, before, after in zip(("base.weight", "base.bias"), run.snapshot, (p.base.weight, p.base.bias)):
        if not _equal(before, after.detach()):
            raise Mistake(f"{name} moved during {len(run.losses)} Adam steps (max change "
                          f"{_max_abs(after.detach() - before):.3g}): this is full fine-tuning, not LoRA",
                          "freeze the pretrained layer: self.base.requires_grad_(False), and never write into it")
    return f"base.weight and base.bias identical after {len(run.losses)} Adam steps (snapshot taken before)"


@check(4, "shapes")
def shapes(cls) -> str:
    for n_in, n_out, r in ((10, 6, 2), (7, 13, 3)):
        layer = make(cls, n_in, n_out, r=r, alpha=4)
        p = parts(layer)
        for name, got, want, hint in (
                ("A", p.A.shape, (r, n_in), "A projects down: nn.Parameter of shape (r, in_features)"),
                ("B", p.B.shape, (n_out, r), "B projects up: nn.Parameter of shape (out_features, r)")):
            if tuple(got) != want:
                raise Mistake(f"{name} has shape {tuple(got)} at in={n_in}, out={n_out}, r={r}; expected {want}", hint)
        for batch in ((5,), (2, 3)):
            got = tuple(forward(layer, _randn(*batch, n_in)).shape)
            if got != (*batch, n_out):
                raise Mistake(f"input {(*batch, n_in)} gave output {got}; expected {(*batch, n_out)}",
                              "forward maps (..., in_features) to (..., out_features): x @ A.T, then @ B.T")
    return "A (r, in), B (out, r); output (..., out) for 2-D and 3-D inputs"


def _merge_diagnosis(W, p, s) -> tuple[str, str]:
    W0, BA = p.base.weight.detach(), (p.B @ p.A).detach()
    for candidate, what, hint in (
            (W0 + BA, "W0 + BA, without the scaling", "multiply BA by self.scaling (α/r)"),
            (s * BA, "(α/r)·BA, without the base", "add self.base.weight"),
            (W0 + s * BA.T.reshape(W0.shape), "a transposed update", "ΔW = B @ A has shape (out, in)")):
        if _allclose(W, candidate, rtol=1e-4, atol=1e-5):
            return f"merged_weight() returns {what}", hint
    return "merged_weight() is not W0 + (α/r)·BA", "return self.base.weight + self.scaling * (self.B @ self.A)"


@check(5, "merged weight reproduces the output")
def merge_reproduces(cls) -> str:
    n_in, n_out, r, alpha = 12, 8, 4, 6
    layer = make(cls, n_in, n_out, r=r, alpha=alpha)
    layer.eval()
    p = parts(layer)
    _randomise(p)
    before = {k: v.detach().clone() for k, v in layer.state_dict().items()}
    x = _randn(6, n_in)
    out = forward(layer, x).detach()
    try:
        W = layer.merged_weight()
    except Exception as exc:
        raise Mistake(f"merged_weight() raised {exc!r}", "return W0 + (α/r)·B @ A, shape (out, in)") from exc
    if not isinstance(W, torch.Tensor):
        raise Mistake(f"merged_weight() returned a {type(W).__name__}, not a tensor",
                      "return self.base.weight + self.scaling * (self.B @ self.A)")
    W = W.detach().clone()
    if tuple(W.shape) != (n_out, n_in):
        hint = "it is transposed: ΔW = B @ A is (out, in)" if tuple(W.shape) == (n_in, n_out) else \
            "W0 + (α/r)·B @ A has the shape of base.weight, (out, in)"
        raise Mistake(f"merged_weight() has shape {tuple(W.shape)}; expected (out, in) = {(n_out, n_in)}", hint)
    changed = [k for k, v in layer.state_dict().items() if not _equal(before[k], v.detach())]
    if changed:
        raise Mistake(f"merged_weight() changed the layer ({', '.join(changed)}): the next forward adds ΔW twice",
                      "compute and return a new tensor; do not write into base.weight")
    b = p.base.bias.detach() if p.base.bias is not None else 0
    gap = _max_abs(x @ W.T + b - out)
    if gap > 1e-4 * max(1.0, _max_abs(out)):
        message, hint = _merge_diagnosis(W, p, alpha / r)
        raise Mistake(f"{message}: x @ Wᵀ + b differs from layer(x) by up to {gap:.3g}", hint)
    return "x @ merged_weight().T + b == layer(x): the update folds into W0, so no added latency (§4.1)"


@check(6, "gradients reach A and B, not the base")
def gradients_flow(cls) -> str:
    layer = make(cls, 10, 6, r=2, alpha=4)
    p = parts(layer)
    x, target = _randn(8, 10), _randn(8, 6)
    out = forward(layer, x)
    if not out.requires_grad:
        raise Mistake("the output carries no gradient at all: the low-rank path is cut off from autograd",
                      "do not .detach() the low-rank path or compute it under torch.no_grad()")
    try:
        F.mse_loss(out, target).backward()
    except RuntimeError as exc:
        raise Mistake(f"backward failed: {exc}", "A and B must be trainable and used in forward") from exc
    if p.B.grad is None:
        raise Mistake("no gradient reached B: the low-rank path is cut off from autograd",
                      "do not .detach() it or compute it under torch.no_grad(); B must be an nn.Parameter")
    if _max_abs(p.B.grad) == 0:
        raise Mistake("B's gradient at init is exactly zero, because A is zero: nothing can ever learn",
                      "initialise A at random (Gaussian in §4.1) and B at zero; not the other way round")
    for name, t in (("base.weight", p.base.weight), ("base.bias", p.base.bias)):
        if t is not None and t.grad is not None:
            raise Mistake(f"{name} received a gradient: the base is not frozen",
                          "self.base.requires_grad_(False)")
    # dL/dA = (α/r)·Bᵀ(...) is zero while B = 0; once B has moved, A must get a gradient too.
    with torch.no_grad():
        p.B.copy_(_randn(p.B.shape))
    p.A.grad = p.B.grad = None
    F.mse_loss(forward(layer, x), target).backward()
    if p.A.grad is None or _max_abs(p.A.grad) == 0:
        raise Mistake("with B non-zero, A still gets no gradient: A does not take part in the low-rank path",
                      "forward must compute (x @ A.T) @ B.T with the parameters themselves")
    return "B gets a gradient at init, A once B has moved; base.weight.grad stays None"


@check(7, "forward matches the LoRA formula")
def formula(cls) -> str:
    for n_in, n_out, r, alpha, bias in ((12, 8, 4, 8, True), (9, 5, 3, 7, True), (6, 10, 2, 3, False),
                                        (5, 7, 1, 2, True)):
        layer = make(cls, n_in, n_out, r=r, alpha=alpha, bias=bias)
        layer.eval()
        p = parts(layer)
        _randomise(p)
        s = alpha / r
        scaling = getattr(layer, "scaling", None)
        if not isinstance(scaling, (int, float, torch.Tensor)) or abs(float(scaling) - s) > 1e-6 * s:
            raise Mistake(f"layer.scaling is {scaling!r} for r={r}, alpha={alpha}; expected α/r = {s:.4g}",
                          "self.scaling = alpha / r (true division: r need not divide α)")
        for batch in ((4,), (2, 3)):
            x = _randn(*batch, n_in)
            out = forward(layer, x).detach().double()
            xd = x.double()
            xw = xd @ p.base.weight.detach().double().T
            b = p.base.bias.detach().double() if p.base.bias is not None else 0
            low = (xd @ p.A.detach().double().T) @ p.B.detach().double().T
            gap = _max_abs(out - (xw + b + s * low))
            if gap > 1e-4 * max(1.0, _max_abs(out)):
                raise Mistake(*_formula_diagnosis(out, xw, b, low, s, r, alpha, gap))
    return "x W0ᵀ + b + (α/r)·x Aᵀ Bᵀ for 4 (in, out, r, α), r ∤ α and 3-D input included"


def _formula_diagnosis(out, xw, b, low, s, r, alpha, gap):
    """Name the likely cause: a wrong scale on the low-rank term, a missing bias, or something else."""
    where = f"at r={r}, alpha={alpha}"
    base = xw + b
    fit = ((out - base) * low).sum().item() / max((low * low).sum().item(), 1e-12)
    if _max_abs(out - base - fit * low) <= 1e-4 * max(1.0, _max_abs(out)):
        causes = {1.0: "the scaling is missing", float(alpha): "it uses α instead of α/r",
                  r / alpha: "it uses r/α instead of α/r", float(alpha // r): "it uses α // r (integer division)"}
        cause = next((c for k, c in causes.items() if abs(fit - k) < 1e-3 * max(1.0, k)), "α or r is ignored")
        return (f"the low-rank term is scaled by {fit:.4g} {where}, not α/r = {s:.4g}: {cause}",
                "scale the update by self.scaling = alpha / r")
    if isinstance(b, torch.Tensor) and _max_abs(out - (xw + s * low)) <= 1e-4 * max(1.0, _max_abs(out)):
        return (f"the output lacks the base's bias b {where}", "the frozen path is self.base(x), bias included")
    return (f"output differs from x W0ᵀ + b + (α/r)·x Aᵀ Bᵀ by up to {gap:.3g} {where}",
            "forward = self.base(x) + self.scaling * ((x @ self.A.T) @ self.B.T)")


@check(8, "paper's init: B zero, A random")
def paper_init(cls) -> str:
    p = parts(make(cls, 16, 12, r=4, alpha=8))
    if _max_abs(p.B) != 0:
        raise Mistake(f"B starts non-zero (max |B| = {_max_abs(p.B):.3g})", "self.B = nn.Parameter(torch.zeros(out_features, r))")
    if _max_abs(p.A) == 0 or torch.unique(p.A.detach()).numel() < 2:
        raise Mistake("A starts constant (all zero?): with B = 0 too, no gradient ever reaches A or B",
                      "initialise A at random, e.g. torch.randn(r, in_features) / r (Gaussian, §4.1)")
    return "B == 0 and A random, so ΔW = 0 at step 0 but gradients can flow"


@check(9, "loss falls on the toy task")
def loss_falls(cls) -> str:
    run = toy_run(cls)
    # A quarter, not ~0: LoRA dropout (a correct choice) leaves a noisy fit after a short run.
    if not run.end_loss <= 0.25 * run.start_loss:
        raise Mistake(f"after {len(run.losses)} Adam steps the held-out loss went from {run.start_loss:.3g} to "
                      f"{run.end_loss:.3g}, not below a quarter of where it started",
                      "check that forward uses A and B, that both train, and that A starts random")
    return f"held-out loss fell below a quarter of its start in {len(run.losses)} Adam steps (rank-2 teacher)"


class _MadeTensors(TorchFunctionMode):
    """Records the function and shape of every new tensor a torch call returns (views excluded).

    A TorchFunctionMode, not a TorchDispatchMode: entering a dispatch mode imports torch._dynamo, about 2 s.
    """

    def __init__(self):
        super().__init__()
        self.made = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out._base is None:
            self.made.append((getattr(func, "__name__", str(func)), tuple(out.shape)))
        return out


@check(10, "no dense ΔW in forward")
def stays_low_rank(cls) -> str:
    n_in, n_out = 24, 20
    layer = make(cls, n_in, n_out, r=2, alpha=4)
    p = parts(layer)
    _randomise(p)
    with _MadeTensors() as seen:
        forward(layer, _randn(3, n_in))
    dense = [(op, shape) for op, shape in seen.made if len(shape) == 2 and sorted(shape) == sorted((n_in, n_out))]
    if dense:
        op, shape = dense[0]
        raise Mistake(f"forward built a dense {shape} matrix with {op}: that is ΔW = B·A at full size, "
                      "which costs what W0 costs and defeats the memory claim",
                      "project down, then up: (x @ self.A.T) @ self.B.T never makes an (out, in) matrix")
    return "forward goes down to rank r and back up; no (out, in) ΔW is ever built"


@check(11, "input left untouched")
def input_untouched(cls) -> str:
    layer = make(cls, 10, 6, r=2, alpha=4)
    _randomise(parts(layer))
    x = _randn(4, 10)
    x_before = x.clone()
    forward(layer, x)
    if not _equal(x, x_before):
        raise Mistake("forward changed its input tensor in place", "use out-of-place ops on x (x * s, not x.mul_(s))")
    return "forward leaves x as it found it"
