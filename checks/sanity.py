"""The drill's sanity checks: 1–6 are the drill page's six, 7–11 close the gaps a broken layer slips through.

Each check takes the learner's class, builds fresh layers itself and returns a short message on a pass, or raises
`Mistake(message, hint)`. They judge behaviour against the layer's own tensors (checks/oracle.py): §4.1's
h = W0 x + (α/r)·B A x, written batch-first as x W0ᵀ + b + (α/r)·x Aᵀ Bᵀ, over drawn configurations.
"""
from __future__ import annotations

import math
import numbers

import torch
from torch.overrides import TorchFunctionMode

from checks import oracle
from checks.oracle import TOLERANCE, configs, fail, formula, gap, param_grad_gaps, randomise, reached
from checks.probe import Mistake, build, describe, forward, make, parts, same_values, toy_run

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


def _owner(t, params: list) -> torch.Tensor | None:
    """The parameter `t` is, or the parameter it is a view of (A behind a property); None if neither."""
    for q in params:
        if t is q or (t._base is not None and t._base is q):
            return q
    return None


def _parameters(layer) -> dict:
    return {k: v.detach().clone() for k, v in layer.named_parameters()}


def _changed_by_forward(layer, before: dict) -> tuple[str, str] | None:
    """(message, hint) when the layer's parameters differ from `before`, taken just before a forward."""
    changed = [k for k, v in layer.named_parameters() if k in before and not same_values(before[k], v)]
    if not changed:
        return None
    return (f"forward changed the layer's parameters ({', '.join(changed)}): a layer's forward only reads them; "
            "the optimizer alone moves A and B",
            "remove in-place writes to parameters (.data, +=, mul_, renorm_) from forward")


def scaling_value(layer) -> float | None:
    """layer.scaling as a float when it is a real number of any type (int, float, Fraction, numpy, 0-d tensor)."""
    s = getattr(layer, "scaling", None)
    if isinstance(s, torch.Tensor):
        return float(s) if s.numel() == 1 else None
    if isinstance(s, numbers.Real) and not isinstance(s, bool):
        return float(s)
    return None


# ----------------------------------------------------------------------------------------------------- check 1


@check(1, "only A and B train")
def only_a_and_b_train(cls) -> str:
    for bias in (True, False):
        layer = make(cls, 10, 6, r=2, alpha=4, bias=bias)
        p = parts(layer)
        named = dict(layer.named_parameters())
        params = list(named.values())
        owners = {}
        for name, t in (("A", p.A), ("B", p.B)):
            owners[name] = _owner(t, params)
            if owners[name] is None:
                raise Mistake(f"{name} is not a registered parameter of the layer, so an optimizer never sees it",
                              f"wrap it: self.{name} = nn.Parameter(...)")
            if not t.requires_grad:
                raise Mistake(f"{name} has requires_grad=False, so it never trains",
                              f"leave {name} trainable; freeze only self.base")
        if not any(t is p.base.weight for t in params):
            raise Mistake("base.weight is not among layer.parameters(): base is kept outside the module tree, so "
                          "state_dict() leaves W0 out, .to() does not move it and a checkpoint loses it",
                          "assign the nn.Linear directly as a module attribute in __init__: self.base = nn.Linear(...)")
        lora = tuple(owners.values())
        extra = [n for n, t in named.items() if t.requires_grad and not any(t is q for q in lora)]
        if extra:
            raise Mistake(f"besides A and B, these parameters train: {', '.join(extra)}",
                          "freeze the pretrained layer: self.base.requires_grad_(False)")
        trainable = sum(t.numel() for t in (p.A, p.B))
        if trainable != 2 * (10 + 6):
            raise Mistake(f"A and B hold {trainable} numbers; LoRALinear(10, 6, r=2) needs r·(in+out) = 32",
                          "A is (r, in_features) and B is (out_features, r)")
        if bias:
            names = [n for n, t in named.items() if t.requires_grad]
            frozen = [n for n, t in named.items() if not t.requires_grad]
            total = sum(t.numel() for t in params)
    saved = {v.untyped_storage().data_ptr() for v in layer.state_dict().values()}
    p = parts(layer)
    left_out = [name for name, t in (("base.weight", p.base.weight), ("A", p.A), ("B", p.B))
                if t.untyped_storage().data_ptr() not in saved]
    if left_out:
        raise Mistake(f"state_dict() leaves out {', '.join(left_out)}: a checkpoint of this layer loses "
                      f"{'the trained adapter' if 'base.weight' not in left_out else 'the pretrained W0'}",
                      "register base as a submodule and A, B as nn.Parameter attributes; do not override "
                      "state_dict() or _save_to_state_dict() to drop them")
    for bias in (True, False):
        _moves_whole(cls, bias)
    return (f"trainable: {', '.join(names)} ({trainable} of {total} parameters at in=10, out=6, r=2); "
            f"frozen: {', '.join(frozen)}")


def _moves_whole(cls, bias: bool) -> None:
    """After .to(torch.float64), base, A and B are float64 and forward gives what it gave in float32."""
    layer = make(cls, 10, 6, r=2, alpha=4, bias=bias)
    layer.eval()
    randomise(layer)
    x = _randn(5, 10)
    before = forward(layer, x, guard=False).detach().double()  # float32: what .to() must not change
    steady = gap(forward(layer, x, guard=False), before) <= TOLERANCE  # else checks 5 and 7 say why, not this one
    layer.to(torch.float64)
    p = parts(layer)
    stuck = [name for name, t in (("base.weight", p.base.weight), ("A", p.A), ("B", p.B)) if t.dtype != torch.float64]
    if stuck:
        raise Mistake(f"after layer.to(torch.float64), {', '.join(stuck)} is still float32: it is kept outside the "
                      "module tree, where .to() and .cuda() do not reach",
                      "assign the nn.Linear directly as a module attribute (self.base = nn.Linear(...)) and A, B as "
                      "nn.Parameter attributes")
    try:
        out = layer(x.double())
    except Exception as exc:
        raise Mistake(f"after layer.to(torch.float64) (bias={bias}), forward on a float64 input raised "
                      f"{describe(exc)}: forward uses tensors that .to() does not move (views or copies cached in "
                      "__init__, a plain tensor attribute?) or casts x to another dtype (x.float()?)",
                      "read self.base, self.A and self.B inside forward, keep x's dtype, and register any other "
                      "tensor as a buffer (self.register_buffer)") from exc
    if isinstance(out, torch.Tensor) and out.dtype != torch.float64:
        raise Mistake(f"after layer.to(torch.float64), forward on a float64 input returns {out.dtype}: it casts "
                      "its output (or x) to a fixed dtype, so the layer cannot run in float64 (or half precision)",
                      "keep x's dtype throughout forward: no .float() or .to(torch.float32)")
    if not isinstance(out, torch.Tensor) or (steady and gap(out, before) > TOLERANCE):
        raise Mistake("after layer.to(torch.float64), forward gives other values than before it: it reads tensors "
                      "that .to() left behind",
                      "read self.base, self.A and self.B inside forward; cache nothing derived from them")


# ----------------------------------------------------------------------------------------------------- check 2


@check(2, "output equals the base at init")
def starts_at_base(cls) -> str:
    for n_in, n_out, r, alpha, bias, lead in ((16, 12, 4, 8, True, (5,)), (9, 13, 3, 7, False, (2, 4)),
                                              (40, 24, 6, 5, True, (20,))):
        layer = make(cls, n_in, n_out, r=r, alpha=alpha, bias=bias)
        layer.train()  # dropout on the frozen path would show here; LoRA dropout is harmless while B = 0
        p = parts(layer)
        for name, t in (("A", p.A), ("B", p.B)):
            if not bool(torch.isfinite(t.detach()).all()):
                raise Mistake(f"{name} starts with NaN or infinite values, so the output does too (0 · NaN is NaN): "
                              "uninitialised memory (torch.empty) is not an init",
                              "B = torch.zeros(out_features, r); A = torch.randn(r, in_features) / r (§4.1)")
        x = _randn(*lead, n_in)
        out = forward(layer, x).detach()
        expected = p.base(x).detach()
        if out.dtype != x.dtype:
            raise Mistake(f"forward returns {out.dtype} for a {x.dtype} input: the next layer of a model, in "
                          f"{x.dtype}, cannot take it (a part of forward computed in another dtype and not cast "
                          "back?)", "return the output in the input's dtype: cast back with .to(x.dtype)")
        if out.shape == expected.shape and _allclose(out, expected, rtol=0, atol=1e-6):
            continue
        where = f"LoRALinear({n_in}, {n_out}, r={r}, alpha={alpha}, bias={bias})"
        if out.shape != expected.shape:
            raise Mistake(f"at init {where} returned shape {tuple(out.shape)} for input {tuple(x.shape)}; "
                          f"base(x) has shape {tuple(expected.shape)}",
                          "forward maps (..., in_features) to (..., out_features)")
        diff = _max_abs(out - expected)
        if _max_abs(p.B) > 0:
            raise Mistake(f"at init the output of {where} differs from base(x) by up to {diff:.3g}, because B is "
                          f"not zero (max |B| = {_max_abs(p.B):.3g}): the model would start away from the "
                          "pretrained one", "initialise B with torch.zeros(out_features, r) and A at random (§4.1)")
        if p.base.bias is not None and _allclose(out, x @ p.base.weight.detach().T, rtol=0, atol=1e-6):
            raise Mistake(f"at init the output of {where} is x W0ᵀ without the base's bias b",
                          "the frozen path is self.base(x), bias included")
        if not bool(torch.isfinite(out).all()):
            raise Mistake(f"at init the output of {where} holds NaN or infinity, though B is zero: A holds values so "
                          "large that x Aᵀ overflows, and 0 · ∞ is NaN (uninitialised memory from torch.empty?)",
                          "A = torch.randn(r, in_features) / r and B = torch.zeros(out_features, r) (§4.1)")
        raise Mistake(f"at init (B = 0) the output of {where} differs from base(x) by up to {diff:.3g}: something "
                      "besides the low-rank term changes the frozen path (dropout on its input, a changed x, "
                      "an extra term?)",
                      "the frozen path is exactly self.base(x); apply any dropout to the low-rank input only")
    return "at init, layer(x) == base(x) (B = 0, so ΔW = BA = 0), in train mode, bias on and off"


# ----------------------------------------------------------------------------------------------------- check 3


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
        if before is None or after is None:
            continue
        if not _equal(before, after.detach()):
            moved = _max_abs(after.detach() - before)
            if moved <= 1e-5 * max(1.0, _max_abs(before)):
                raise Mistake(f"{name} changed by {moved:.3g} during the checks' own run: a rounding-sized drift, "
                              "the mark of code that writes ΔW into W0 and takes it back (merging on eval(), "
                              "unmerging on train()). W0 must stay bit for bit what it was",
                              "never write into base.weight; merged_weight() returns a new tensor instead")
            raise Mistake(f"{name} moved during the checks' own run ({len(run.losses)} Adam steps on a fresh "
                          f"LoRALinear(16, 12, r=2); max change {_max_abs(after.detach() - before):.3g}): this is "
                          "full fine-tuning, not LoRA",
                          "freeze the pretrained layer: self.base.requires_grad_(False), and never write into it")
    mine = "your toy run left base.weight as base_snapshot had it; separately, " if trained is not None else ""
    return (f"{mine}in the checks' own run ({len(run.losses)} Adam steps on a fresh LoRALinear(16, 12, r=2), not "
            "your toy run) base.weight and base.bias stayed identical to a snapshot taken before")


# ----------------------------------------------------------------------------------------------------- check 4


@check(4, "shapes, sizes and defaults")
def shapes(cls) -> str:
    for n_in, n_out, r in ((10, 6, 2), (7, 13, 3), (40, 33, 6)):
        layer = make(cls, n_in, n_out, r=r, alpha=4)
        p = parts(layer)
        for name, want in (("in_features", n_in), ("out_features", n_out), ("r", r)):
            got = getattr(layer, name, None)
            if got != want:
                seen = "is missing" if not hasattr(layer, name) else f"is {got!r}"
                raise Mistake(f"layer.{name} {seen} for LoRALinear({n_in}, {n_out}, r={r}); expected {want}",
                              f"keep the constructor's arguments: self.{name} = {name}")
        for name, got, want, hint in (
                ("A", p.A.shape, (r, n_in), "A projects down: nn.Parameter of shape (r, in_features)"),
                ("B", p.B.shape, (n_out, r), "B projects up: nn.Parameter of shape (out_features, r)")):
            if tuple(got) != want:
                raise Mistake(f"{name} has shape {tuple(got)} at in={n_in}, out={n_out}, r={r}; expected {want}", hint)
        for lead in ((), (0,), (5,), (2, 3), (2, 3, 4)):
            got = tuple(forward(layer, _randn(*lead, n_in)).shape)
            if got != (*lead, n_out):
                raise Mistake(f"input {(*lead, n_in)} gave output {got}; expected {(*lead, n_out)}",
                              "forward maps (..., in_features) to (..., out_features) for any number of leading "
                              "dimensions: x @ A.T, then @ B.T")
    default = build(cls, "LoRALinear(12, 8)", 12, 8)  # the defaults left out, as a learner writes the call
    p = parts(default)
    s = scaling_value(default)
    problems = []
    if tuple(p.A.shape) != (4, 12) or getattr(default, "r", None) != 4:
        problems.append(f"r is {getattr(default, 'r', tuple(p.A.shape)[0])!r}, not 4")
    if s is None or not abs(s - 2.0) <= 1e-6:  # written so that a NaN fails
        problems.append(f"scaling is {getattr(default, 'scaling', None)!r}, not α/r = 8/4 = 2")
    if p.base.bias is None:
        problems.append("base has no bias, though bias=True is the default")
    if problems:
        raise Mistake(f"LoRALinear(12, 8) with the defaults left out: {'; '.join(problems)}",
                      "the contract's defaults are r=4, alpha=8, bias=True: "
                      "def __init__(self, in_features, out_features, r=4, alpha=8, bias=True)")
    if parts(make(cls, 12, 8, r=4, alpha=8, bias=False)).base.bias is not None:
        raise Mistake("LoRALinear(12, 8, bias=False) still has a bias: base.bias is not None",
                      "pass the flag on: self.base = nn.Linear(in_features, out_features, bias=bias)")
    return ("A (r, in), B (out, r); output (..., out) for 1-D to 4-D input and an empty batch; in_features, "
            "out_features, r kept; defaults r=4, alpha=8, bias=True; bias=False means no bias")


# ----------------------------------------------------------------------------------------------------- check 5


def _merge_diagnosis(W, W0, BA, s) -> tuple[str, str]:
    for candidate, what, hint in (
            (W0 + BA, "W0 + BA, without the scaling", "multiply BA by self.scaling (α/r)"),
            (s * BA, "(α/r)·BA, without the base", "add self.base.weight"),
            (W0, "W0 alone, without the update", "add self.scaling * (self.B @ self.A)"),
            (W0 + s * BA.T if BA.shape[0] == BA.shape[1] else None, "W0 + (α/r)·(BA)ᵀ, the update transposed",
             "ΔW = B @ A is already (out, in): add it as it is, with no transpose")):
        if candidate is not None and gap(W, candidate) <= TOLERANCE:
            return f"merged_weight() returns {what}", hint
    return "merged_weight() is not W0 + (α/r)·BA", "return self.base.weight + self.scaling * (self.B @ self.A)"


def _deterministic(layer, x) -> None:
    """In eval mode, forward twice on one input gives one output and leaves the layer's parameters as they were."""
    before = _parameters(layer)
    first = forward(layer, x).detach().clone()
    changed = _changed_by_forward(layer, before)
    if changed:
        raise Mistake(*changed)
    if gap(forward(layer, x), first.double()) > TOLERANCE:
        raise Mistake("in eval mode, two calls of forward on the same input give different outputs: something "
                      "random (dropout?) is active outside train mode",
                      "nn.Dropout switches itself off in eval mode; F.dropout needs training=self.training")
    draws = []
    for _ in range(2):
        forward(layer, x)
        draws.append(torch.rand(8))
    if _equal(*draws):
        raise Mistake("forward resets torch's random number generator (torch.manual_seed in forward?): every "
                      "random draw after a forward repeats, so a training loop's batches, dropout masks and new "
                      "layers' A repeat too", "seed once, outside the layer; never call torch.manual_seed in forward")


def _merged(layer, when: str) -> torch.Tensor:
    try:
        W = layer.merged_weight()
    except Exception as exc:
        raise Mistake(f"merged_weight() {when} raised {describe(exc)}",
                      "return W0 + (α/r)·B @ A, shape (out, in)") from exc
    if not isinstance(W, torch.Tensor):
        raise Mistake(f"merged_weight() returned a {type(W).__name__}, not a tensor",
                      "return self.base.weight + self.scaling * (self.B @ self.A)")
    return W.detach().clone()


def _expected_merge(p, s) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """W0 + s·BA, W0 and BA in float64, from the layer's current tensors."""
    W0 = p.base.weight.detach().double()
    BA = p.B.detach().double() @ p.A.detach().double()
    return W0 + s * BA, W0, BA


def _dense(x, p, s) -> torch.Tensor:
    """x (W0 + s·BA)ᵀ + b in float64, from the layer's current tensors."""
    b = p.base.bias.detach().double() if p.base.bias is not None else 0
    return x.double() @ _expected_merge(p, s)[0].T + b


@check(5, "merged weight is W0 + (α/r)·BA")
def merge_reproduces(cls) -> str:
    fresh = make(cls, 12, 8, r=4, alpha=6)
    fp = parts(fresh)
    try:
        aliased, again = fresh.merged_weight(), fresh.merged_weight()
    except Exception:
        aliased = again = None  # _merged below names the error
    if isinstance(aliased, torch.Tensor) and any(
            aliased.untyped_storage().data_ptr() == q.untyped_storage().data_ptr()
            for q in [*fresh.parameters(), *fresh.buffers(), fp.base.weight]):
        raise Mistake("merged_weight() returns a tensor that shares memory with the layer's own (base.weight "
                      "itself?): whoever changes the merged weight in place changes W0",
                      "return a new tensor: self.base.weight + self.scaling * (self.B @ self.A)")
    if isinstance(aliased, torch.Tensor) and isinstance(again, torch.Tensor) and \
            aliased.untyped_storage().data_ptr() == again.untyped_storage().data_ptr():
        raise Mistake("two calls of merged_weight() return the same memory: the second call overwrites what the "
                      "first returned",
                      "return a new tensor from every call: self.base.weight + self.scaling * (self.B @ self.A)")
    for n_in, n_out, r, alpha in ((12, 8, 4, 6), (7, 20, 3, 5), (6, 6, 2, 3)):
        s = alpha / r
        layer = make(cls, n_in, n_out, r=r, alpha=alpha)
        layer.eval()
        p = parts(layer)
        randomise(layer)
        x = _randn(6, n_in)
        _deterministic(layer, x)
        if gap(forward(layer, x), _dense(x, p, s)) <= TOLERANCE:
            with torch.no_grad():
                p.A.add_(_randn(p.A.shape))
                p.B.add_(_randn(p.B.shape))
            if gap(forward(layer, x), _dense(x, p, s)) > TOLERANCE:
                raise Mistake("in eval mode, forward does not follow A and B as they change (before merged_weight() "
                              "is ever called): it keeps something derived from them from an earlier call",
                              "compute forward from self.A and self.B on every call; cache nothing derived from them")
        out_before = forward(layer, x).detach().clone()
        followed = gap(out_before, _dense(x, p, s)) <= TOLERANCE  # else check 7 has the story, not this one
        state = {k: v.detach().clone() for k, v in layer.state_dict().items()}  # just before the call
        W = _merged(layer, "")
        changed = [k for k, v in layer.state_dict().items() if k not in state or not same_values(state[k], v)]
        if changed:
            raise Mistake(f"merged_weight() changed the layer ({', '.join(changed)}): the next forward would add "
                          "ΔW twice", "compute and return a new tensor; do not write into base.weight")
        if tuple(W.shape) != (n_out, n_in):
            hint = "it is transposed: ΔW = B @ A is (out, in)" if tuple(W.shape) == (n_in, n_out) else \
                "W0 + (α/r)·B @ A has the shape of base.weight, (out, in)"
            raise Mistake(f"merged_weight() has shape {tuple(W.shape)}; expected (out, in) = {(n_out, n_in)}", hint)
        want, W0, BA = _expected_merge(p, s)
        if gap(W, want) > TOLERANCE:
            message, hint = _merge_diagnosis(W, W0, BA, s)
            raise Mistake(f"{message} (at r={r}, alpha={alpha}; off by up to {(W.double() - want).abs().max():.3g})",
                          hint)
        if gap(_merged(layer, "called a second time"), want) > TOLERANCE:
            raise Mistake("a second call of merged_weight() returns something else than the first",
                          "compute W0 + (α/r)·BA afresh on every call, without side effects")
        if gap(forward(layer, x), out_before.double()) > TOLERANCE:
            raise Mistake("forward gives a different output after merged_weight() was called",
                          "merged_weight() must leave the layer as it was: compute and return a new tensor")
        with torch.no_grad():  # training moves A and B: the merge must follow them
            p.B.add_(_randn(p.B.shape))
            p.A.add_(_randn(p.A.shape))
        if followed and gap(forward(layer, x), _dense(x, p, s)) > TOLERANCE:
            raise Mistake("once merged_weight() has been called, forward no longer follows A and B as they change: "
                          "it serves the weight merged then",
                          "merged_weight() only returns a tensor; forward always computes base(x) + the low-rank term")
        want, W0, BA = _expected_merge(p, s)
        if gap(_merged(layer, "after A and B changed"), want) > TOLERANCE:
            raise Mistake("after A and B change (as training changes them), merged_weight() still returns the old "
                          "merge: it is cached or stale",
                          "compute W0 + (α/r)·BA from the current parameters on every call")
        with torch.no_grad():  # a new base (load_state_dict writes in place): the merge must follow it too
            p.base.weight.copy_(_randn(p.base.weight.shape))
        want, W0, BA = _expected_merge(p, s)
        if gap(_merged(layer, "after base.weight changed"), want) > TOLERANCE:
            raise Mistake("after base.weight changes in place (as load_state_dict changes it), merged_weight() still "
                          "returns the old merge: it is cached and stale",
                          "compute W0 + (α/r)·BA from the current tensors on every call")
    return ("merged_weight() == W0 + (α/r)·BA, a new tensor (square layers included): the same when called "
            "twice, following A, B and W0 as they change, and forward unchanged after it, so the update folds into W0 with no added latency (§4.1)")


# ----------------------------------------------------------------------------------------------------- check 6


@check(6, "gradients reach A, B and the input, not the base")
def gradients_flow(cls) -> str:
    n_in, n_out = 10, 6
    layer = make(cls, n_in, n_out, r=2, alpha=4)  # train mode, with any dropout off (oracle.run)
    p = parts(layer)
    randomise(layer)
    with torch.no_grad():
        p.B.zero_()  # only the frozen path carries x's gradient now: ∂L/∂x = g W0
    x = _randn(8, n_in, requires_grad=True)
    out = oracle.run(layer, x, train=True)
    if not out.requires_grad:
        raise Mistake("the output carries no gradient at all: forward is cut off from autograd",
                      "do not .detach() anything in forward or compute it under torch.no_grad()")
    if gap(out, p.base(x).detach().double()) > TOLERANCE:
        raise Mistake("with base.weight and base.bias set to new values in place and B = 0, layer(x) is not "
                      "base(x): forward reads a copy of base's weight or bias taken earlier, not self.base as it is "
                      "now",
                      "compute the frozen path from self.base at call time: self.base(x); keep no copy of its weight")
    g = _randn(out.shape)
    try:
        (out * g).sum().backward()
    except RuntimeError as exc:
        hint = ("forward must not modify in place a tensor autograd saved, its input x among them"
                if "inplace" in str(exc) else "A and B must be trainable parameters used in forward")
        raise Mistake(f"backward failed: {exc}", hint) from exc
    for name, t in (("base.weight", p.base.weight), ("base.bias", p.base.bias)):
        if t is not None and t.grad is not None:
            raise Mistake(f"{name} received a gradient: the base is not frozen", "self.base.requires_grad_(False)")
    frozen_path = g @ p.base.weight.detach()
    if x.grad is None or gap(x.grad, frozen_path.double()) > TOLERANCE:
        seen = "no gradient reaches the input x" if x.grad is None else "the input's gradient is not g·W0 with B = 0"
        raise Mistake(f"{seen}: the frozen path is cut off from autograd (x.detach(), .data on x, or torch.no_grad() "
                      "around base(x)). W0 needs no gradient, but x does: in a stack of these layers, every layer "
                      "below learns through it",
                      "compute self.base(x) with autograd on; freezing is requires_grad_(False) on base's parameters")
    if not reached(layer, p.B):
        raise Mistake("no gradient reached B with A random: the low-rank path is cut off from autograd",
                      "do not .detach() it or compute it under torch.no_grad(); B must be an nn.Parameter")
    with torch.no_grad():
        p.B.copy_(_randn(p.B.shape))
    for q in layer.parameters():
        q.grad = None
    (oracle.run(layer, x, train=True) * g).sum().backward()
    if not reached(layer, p.A):
        raise Mistake("with B non-zero, A still gets no gradient: A does not take part in the low-rank path",
                      "forward must compute (x @ A.T) @ B.T with the parameters themselves")
    return "A, B and the input x get gradients (x's through the frozen path too); base's .grad stays None"


# ----------------------------------------------------------------------------------------------------- check 7


def _formula_diagnosis(config, out, x, p, expected) -> tuple[str, str]:
    """Name the likely cause: a wrong scale on the low-rank term, a missing bias, or something else."""
    xd = x.detach().double()
    base = xd @ p.base.weight.detach().double().T
    low = (xd @ p.A.detach().double().T) @ p.B.detach().double().T
    b = p.base.bias.detach().double() if p.base.bias is not None else 0
    got = out.detach().double()
    s, r, alpha = config.scaling, config.r, config.alpha
    fit = ((got - base - b) * low).sum().item() / max((low * low).sum().item(), 1e-12)
    if gap(got, base + b + fit * low) <= TOLERANCE:
        causes = {1.0: "the scaling is missing", float(alpha): "it uses α instead of α/r",
                  r / alpha: "it uses r/α instead of α/r", float(alpha // r): "it uses α // r (integer division)",
                  alpha / r ** 0.5: "it uses α/√r (rsLoRA's scaling), not the paper's α/r (§4.1)",
                  0.0: "the low-rank term is missing"}
        cause = next((c for k, c in causes.items() if abs(fit - k) < 1e-3 * max(1.0, k)),
                     "the factor is none of α/r's usual slips")
        return (f"the low-rank term is scaled by {fit:.4g}, not α/r = {s:.4g} (r={r}, alpha={alpha}): {cause}",
                "scale the update by alpha / r, the same number as self.scaling")
    if p.base.bias is not None and gap(got, base + s * low) <= TOLERANCE:
        return "the output lacks the base's bias b", "the frozen path is self.base(x), bias included"
    return (f"the output differs from x W0ᵀ + b + (α/r)·x Aᵀ Bᵀ by up to "
            f"{(got - expected).abs().max().item():.3g}",
            "forward = self.base(x) + self.scaling * ((x @ self.A.T) @ self.B.T), reading base, A and B as they "
            "are at call time (no private copies), for any input shape and layout, in train and eval mode")


def judge_formula(cls, config: oracle.Config) -> None:
    """One configuration of check 7: output and gradients against the float64 formula; raises Mistake if off."""
    layer = config.build(cls)
    randomise(layer)
    p = parts(layer)
    x = config.input(requires_grad=True)
    g = _randn(*config.lead, config.out_features)
    want = formula(x, p.base.weight, p.base.bias, p.A, p.B, config.scaling, g)  # the tensors as set, before forward
    before = _parameters(layer)
    for q in layer.parameters():
        q.grad = None
    out = oracle.run(layer, x, config.train)
    changed = _changed_by_forward(layer, before)
    if changed:
        raise fail(config, *changed)
    if tuple(out.shape) != tuple(want.out.shape):
        raise fail(config, f"the output has shape {tuple(out.shape)}; expected {tuple(want.out.shape)}",
                   "forward maps (..., in_features) to (..., out_features)")
    if gap(out, want.out) > TOLERANCE:
        if config.train and _is_random(layer, x, out):
            _judge_on_average(layer, config, x, p, want, g)  # hand-written LoRA dropout: right on average, or not
            return
        raise fail(config, *_formula_diagnosis(config, out, x, p, want.out))
    if not out.requires_grad:
        raise fail(config, "the output carries no gradient",
                   "keep forward in autograd: no .detach() or torch.no_grad()")
    (out * g).sum().backward()
    gaps = [("x", None if x.grad is None else gap(x.grad, want.grad_x))]
    gaps += param_grad_gaps(layer, [("A", p.A), ("B", p.B)], [want.grad_A, want.grad_B])
    for name, got in gaps:
        if got is None:
            raise fail(config, f"no gradient reached {name}",
                       f"{name} must take part in forward through autograd")
        if got > TOLERANCE:
            raise fail(config, f"the gradient with respect to {name} is not the formula's (off by "
                               f"{got:.3g}, relative): a hand-written backward, or a forward whose value is right "
                               "but whose graph is not",
                       "let autograd differentiate forward; if you write a backward, check it with "
                       "torch.autograd.gradcheck in float64")
    if not config.train:
        _judge_without_autograd(layer, config, x, want)


def _is_random(layer, x, out, tries: int = 32) -> bool:
    """Whether more train-mode forwards on the same input give other outputs (dropout written by hand). Several
    tries: at a small p every draw may keep every input, and all of them then agree (scaled by 1/(1 - p))."""
    with torch.no_grad():
        return any(gap(oracle.run(layer, x.detach(), True), out.detach().double()) > TOLERANCE for _ in range(tries))


def _noise_and_error(draws: torch.Tensor, want: torch.Tensor) -> tuple[float, float, float]:
    """The mean's distance from `want`, its standard error (both as norms over every element) and a float slack."""
    mean = draws.mean(0)
    noise = ((draws - mean) ** 2).sum().sqrt().item() / draws.shape[0]
    slack = TOLERANCE * (1 + want.abs().max().item()) * want.numel() ** 0.5
    return (mean - want).norm().item(), noise, slack


def _judge_on_average(layer, config, x, p, want, g, draws: int = 1024, grad_draws: int = 128) -> None:
    """A forward that is random in train mode must equal the formula on average, and so must x's gradient:
    dropout on the low-rank input, rescaled by 1/(1 - p), does; a missing rescale or a cut graph does not."""
    where = str(config).replace(" (dropout off)", "")
    with torch.no_grad():
        outs = torch.stack([oracle.run(layer, x.detach(), True).double() for _ in range(draws)])
    error, noise, slack = _noise_and_error(outs, want.out)
    if error > 5 * noise + slack:
        message, hint = _formula_diagnosis(config, outs.mean(0), x, p, want.out)
        raise Mistake(f"at {where}: forward is random in train mode, and wrong on average over {draws} calls: "
                      f"{message}. Dropout without its 1/(1 - p) rescaling does this",
                      "apply dropout to the low-rank input with nn.Dropout, or rescale by 1/(1 - p) yourself; "
                      + hint)
    leaf = x.detach().clone().requires_grad_(True)
    grads = []
    for _ in range(grad_draws):
        leaf.grad = None
        (oracle.run(layer, leaf, True) * g).sum().backward()
        grads.append(leaf.grad.double() if leaf.grad is not None else torch.zeros_like(want.grad_x))
    error, noise, slack = _noise_and_error(torch.stack(grads), want.grad_x)
    if error > 5 * noise + slack:
        raise Mistake(f"at {where}: forward is random in train mode, and on average over {grad_draws} calls the "
                      "gradient with respect to x is not the formula's: part of forward is cut from autograd in "
                      "train mode (x.detach() before dropout?)",
                      "let the gradient reach x through both paths: no .detach() or .data on x")


def _judge_without_autograd(layer, config, x, want) -> None:
    """Under torch.no_grad() (inference), forward gives the formula too, and a new tensor on every call."""
    with torch.no_grad():
        first = oracle.run(layer, x.detach(), False)
        kept = first.detach().clone()
        if gap(first, want.out) > TOLERANCE:
            raise fail(config, "under torch.no_grad(), as at inference, the output is not x W0ᵀ + b + (α/r)·x Aᵀ Bᵀ "
                               "though it is with autograd on",
                       "forward computes the same thing with or without autograd; keep one code path")
        oracle.run(layer, x.detach() + 1, False)
        if not same_values(kept, first):
            raise fail(config, "under torch.no_grad(), a second call of forward overwrote the first call's output: "
                               "forward returns a buffer it reuses",
                       "return a new tensor from every call")


@check(7, "forward matches the LoRA formula")
def formula_matches(cls) -> str:
    drawn = configs()
    for config in drawn[:6]:
        layer = config.build(cls)
        s = scaling_value(layer)
        if s is None or not abs(s - config.scaling) <= 1e-6 * config.scaling:  # a NaN fails too
            raise Mistake(f"layer.scaling is {getattr(layer, 'scaling', None)!r} for r={config.r}, "
                          f"alpha={config.alpha}; expected α/r = {config.scaling:.4g}",
                          "self.scaling = alpha / r (true division: r need not divide α)")
    for config in drawn:
        judge_formula(cls, config)
    largest = max(drawn, key=lambda c: c.in_features * c.out_features)
    return (f"output and gradients (x, A, B) equal x W0ᵀ + b + (α/r)·x Aᵀ Bᵀ in float64 for {len(drawn)} drawn "
            f"configurations (sizes up to {largest.in_features}×{largest.out_features}, r up to "
            f"{max(c.r for c in drawn)}, r ∤ α, bias on and off, 2-D to 4-D and strided input, train and eval)")


# ----------------------------------------------------------------------------------------------------- check 8


class _Unwritten(TorchFunctionMode):
    """Remembers the storage of every tensor torch.empty makes, and forgets it once anything writes into it
    (normal_, uniform_, copy_, nn.init.*, item assignment, in-place arithmetic): what is left is uninitialised."""

    _EMPTY = {torch.empty, torch.empty_like, torch.empty_strided, torch.Tensor.new_empty}

    def __init__(self):
        super().__init__()
        self.unwritten: set[int] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if func in self._EMPTY and isinstance(out, torch.Tensor):
            self.unwritten.add(out.untyped_storage().data_ptr())
        writes = (name.endswith("_") and not name.startswith("__")) or name == "__setitem__" or name.startswith("__i")
        first = args[0] if args else kwargs.get("tensor", kwargs.get("input"))  # nn.init passes tensor=...
        for target in ([first] if writes else []) + [kwargs.get("out")]:
            if isinstance(target, torch.Tensor):
                self.unwritten.discard(target.untyped_storage().data_ptr())
        return out


@check(8, "paper's init: B zero, A random")
def paper_init(cls) -> str:
    with _Unwritten() as watch:
        fresh = parts(make(cls, 16, 12, r=4, alpha=8))
    if fresh.A.untyped_storage().data_ptr() in watch.unwritten:
        raise Mistake("A is uninitialised memory: it comes from torch.empty and nothing writes into it afterwards, "
                      "so its values are whatever the memory held (zeros, garbage, NaN), not a random draw",
                      "initialise A at random, e.g. torch.randn(r, in_features) / r, or nn.init.normal_(self.A) "
                      "after torch.empty")
    layers = []
    for seed in (1, 2, 1, None):  # the last: a second layer right after the third, without reseeding
        if seed is not None:
            torch.manual_seed(seed)
        layers.append(parts(make(cls, 16, 12, r=4, alpha=8)))
    p = layers[0]
    if _max_abs(p.B) != 0:
        raise Mistake(f"B starts non-zero (max |B| = {_max_abs(p.B):.3g}). The paper starts B at zero and A random "
                      "(§4.1): ΔW = BA = 0 at step 0, so training begins at the pretrained model, and B gets the "
                      "first gradient",
                      "self.B = nn.Parameter(torch.zeros(out_features, r)); A random, e.g. torch.randn(r, in_features)")
    if _max_abs(p.A) == 0:
        raise Mistake("A starts at zero: with B = 0 too, ∂L/∂A ∝ B = 0 and ∂L/∂B ∝ A = 0, so no gradient ever "
                      "reaches either and nothing learns",
                      "initialise A at random, e.g. torch.randn(r, in_features) / r (Gaussian, §4.1)")
    if not bool(torch.isfinite(p.A.detach()).all()):
        raise Mistake("A starts with NaN or infinite values: uninitialised memory (torch.empty) is not a random draw",
                      "initialise A at random, e.g. torch.randn(r, in_features) / r (Gaussian, §4.1)")
    rank = int(torch.linalg.matrix_rank(p.A.detach().double()))
    if rank < min(p.A.shape):
        raise Mistake(f"A starts with rank {rank} of a possible {min(p.A.shape)}: its rows are not independent draws, "
                      f"so BA can never reach rank r and equal rows of A get equal gradients forever",
                      "draw every entry of A independently, e.g. torch.randn(r, in_features) / r (Gaussian, §4.1)")
    if _equal(p.A.detach(), layers[1].A.detach()) or torch.unique(p.A.detach()).numel() < 2:
        raise Mistake("A is the same for every fresh layer (two layers built under different seeds start with "
                      "the same A): it is a fixed matrix, not random",
                      "draw A at random in __init__, e.g. torch.randn(r, in_features) / r (Gaussian, §4.1)")
    if not _equal(p.A.detach(), layers[2].A.detach()):
        raise Mistake("A differs between two layers built after the same torch.manual_seed: it is not drawn from "
                      "torch's generator (uninitialised memory from torch.empty? another library's generator?), so "
                      "no run of this layer can be reproduced",
                      "draw A with torch: torch.randn(r, in_features) / r, or nn.init on a tensor you made")
    if _equal(layers[2].A.detach(), layers[3].A.detach()):
        raise Mistake("two layers built one after the other start with the same A (A is drawn from a generator "
                      "of its own, seeded the same way each time): every adapter in a model would start alike",
                      "draw A from torch's global generator in __init__: torch.randn(r, in_features) / r")
    return ("B == 0 and A random (fresh layers differ, the same seed gives the same A, the next layer another), so "
            "ΔW = 0 at step 0 but gradients can flow")


# ----------------------------------------------------------------------------------------------------- check 9


@check(9, "loss falls on the toy task")
def loss_falls(cls) -> str:
    run = toy_run(cls)
    # A quarter, not ~0: LoRA dropout (a correct choice) leaves a noisy fit after a short run.
    if not (math.isfinite(run.start_loss) and math.isfinite(run.end_loss)):
        raise Mistake(f"in the checks' own run ({len(run.losses)} Adam steps on a fresh LoRALinear(16, 12, r=2)) the "
                      f"held-out loss went from {run.start_loss:.3g} to {run.end_loss:.3g}: not a finite number",
                      "a NaN or infinity at init (A from torch.empty?) or an update that blows up; initialise A with "
                      "torch.randn(r, in_features) / r and B with zeros")
    if not run.end_loss <= 0.25 * run.start_loss:
        raise Mistake(f"in the checks' own run ({len(run.losses)} Adam steps on a fresh LoRALinear(16, 12, r=2)) "
                      f"the held-out loss went from {run.start_loss:.3g} to {run.end_loss:.3g}, not below a quarter "
                      "of where it started",
                      "check that forward uses A and B, that both train, and that A starts random; LoRA dropout "
                      "of p = 0.5 or more also leaves this short run short of it (use a smaller p)")
    return (f"held-out loss fell below a quarter of its start in the checks' own run of {len(run.losses)} Adam "
            "steps (rank-2 teacher)")


# ----------------------------------------------------------------------------------------------------- check 10


class _MadeTensors(TorchFunctionMode):
    """Keeps every tensor a torch call returns during forward with at least `numel` numbers.

    A TorchFunctionMode, not a TorchDispatchMode: entering a dispatch mode imports torch._dynamo, about 2 s.
    """

    def __init__(self, numel: int):
        super().__init__()
        self.numel, self.made = numel, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.numel() >= self.numel:
            self.made.append((getattr(func, "__name__", str(func)), out.detach()))
        return out


def _layouts(t: torch.Tensor, n_out: int, n_in: int):
    """(out, in) views of `t`: reshaped either way round, or an (out, in) block of a padded 2-D matrix."""
    if t.numel() == n_out * n_in:
        yield t.reshape(n_out, n_in)
        yield t.reshape(n_in, n_out).T
    m = t.squeeze()
    if m.dim() != 2:
        return
    for candidate in (m, m.T):
        rows, cols = candidate.shape
        if rows >= n_out and cols >= n_in and (rows - n_out + 1) * (cols - n_in + 1) <= 16:
            for i in range(rows - n_out + 1):
                for j in range(cols - n_in + 1):
                    yield candidate[i:i + n_out, j:j + n_in]


def _is_delta(t: torch.Tensor, W0: torch.Tensor, BA: torch.Tensor, n_out: int, n_in: int) -> str:
    """Which of ΔW's forms `t` holds (c·BA or W0 + c·BA, any c ≠ 0), in any layout (transposed, with unit
    dimensions, or padded)."""
    t = t.double()
    norm = (BA * BA).sum().item()
    for layout in _layouts(t, n_out, n_in):
        for base, name in ((0, "{c}·B·A"), (W0, "W0 + {c}·B·A")):
            rest = layout - base
            c = (rest * BA).sum().item() / norm
            if abs(c) > 1e-6 and gap(rest, c * BA) <= TOLERANCE:
                return name.format(c=f"{c:.3g}").replace("1·B·A", "B·A") if abs(c - 1) < 1e-6 else \
                    name.format(c=f"{c:.3g}")
    return ""


@check(10, "no dense ΔW in forward")
def stays_low_rank(cls) -> str:
    for n_in, n_out, r, alpha in ((24, 20, 3, 5), (40, 36, 6, 9)):
        layer = make(cls, n_in, n_out, r=r, alpha=alpha)
        layer.eval()
        p = parts(layer)
        randomise(layer)
        W0, BA = p.base.weight.detach().double(), p.B.detach().double() @ p.A.detach().double()
        for lead, train, grad in (((1,), False, True), ((3,), True, True), ((17,), False, True),
                                  ((2, 20), True, True), ((2, 3, 7), False, True), ((5,), False, False),
                                  ((4, 64), False, True)):
            layer.train(train)
            with torch.set_grad_enabled(grad), _MadeTensors(n_in * n_out) as seen:
                forward(layer, _randn(*lead, n_in))
            for op, t in seen.made:
                what = _is_delta(t, W0, BA, n_out, n_in)
                if what:
                    mode = ("train" if train else "eval") + (" mode" if grad else " mode under torch.no_grad()")
                    raise Mistake(
                        f"forward built the dense {what} ({n_out}×{n_in} numbers, with {op}) for an input of shape "
                        f"{(*lead, n_in)} in {mode}. The contract's forward goes down to rank r and back up; a dense ΔW costs an "
                        "(out, in) temporary and an out·in·r multiply on every forward, the compute and memory of W0 "
                        "again",
                        "project down, then up: (x @ self.A.T) @ self.B.T never makes an (out, in) matrix; "
                        "merging belongs in merged_weight()")
    return ("forward goes down to rank r and back up; no (out, in) ΔW is built at any batch size, in train or eval "
            "mode, with or without autograd")


# ----------------------------------------------------------------------------------------------------- check 11


@check(11, "input left untouched")
def input_untouched(cls) -> str:
    for config in configs()[:8]:
        layer = config.build(cls)
        randomise(layer)
        x = config.input()
        x_before = x.clone()
        forward(layer, x)
        if not _equal(x, x_before):
            raise fail(config, "forward changed its input tensor in place",
                       "use out-of-place ops on x (x * s, not x.mul_(s))")
    return "forward leaves x as it found it (2-D to 4-D, strided, train and eval)"
