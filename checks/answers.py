"""The worker's side of the trusted judge (checks/judge.py): what the learner's layer does on the judge's questions.

Each answer reports what happened, not whether it was right: outputs, the change one gradient step makes to A and
B, merged_weight(), the parameters after a training run. The parent compares them with the formula. A gradient is
reported as that change (A before the step, minus A after one step of size 1 on every trainable parameter), so A
and B may be parameters or views of parameters (a transpose, a slice of one packed parameter) alike. While the
layer answers, KitCalls notes any function of the kit's checks/ that runs inside it: a layer whose work is the
kit's own code is the kit's (checks/isolated.py says so).
"""
from __future__ import annotations

import contextlib
import os
import sys
import sysconfig

import torch
from torch.nn import functional as F

from checks.oracle import NoDropout, laid_out
from checks.probe import Adam, Mistake, build, describe, forward, make, parts
from checks.runner import one_thread
from checks.sanity import scaling_value
from checks.verdict import cut

_tensor, _no_grad = torch.tensor, torch.no_grad
RANDOM_DRAWS = 512  # calls averaged for a forward that is random in train mode


def _rows(t: torch.Tensor) -> list:
    """A tensor as a list of rows (its last dimension), in float64 numbers."""
    t = t.detach().double()
    return t.reshape(-1, t.shape[-1]).tolist() if t.dim() else [[t.item()]]


def _set(layer, **values) -> None:
    p = parts(layer)
    with _no_grad():
        for name, t in (("W0", p.base.weight), ("b", p.base.bias), ("A", p.A), ("B", p.B)):
            if name in values and t is not None and values[name] is not None:
                t.copy_(_tensor(values[name], dtype=t.dtype))


def _init(cls, q) -> dict:
    As, Bs = [], []
    for seed in [*q["seeds"], None]:  # the last: a second layer right after the third, as a model builds many
        if seed is not None:
            torch.manual_seed(seed)
        p = parts(make(cls, q["in"], q["out"], r=q["r"], alpha=q["alpha"], bias=q["bias"]))
        As.append(p.A.detach().double().tolist())
        Bs.append(p.B.detach().double().tolist())
    layer = make(cls, q["in"], q["out"], r=q["r"], alpha=q["alpha"], bias=q["bias"])
    layer.train()
    _set(layer, W0=q["W0"], b=q["b"])
    with _no_grad():
        out = forward(layer, _tensor(q["x"]))
    return {"A": As, "B": Bs, "out": _rows(out)}


def _defaults(cls, q) -> dict:
    layer = build(cls, f"LoRALinear({q['in']}, {q['out']})", q["in"], q["out"])
    layer.eval()
    p = parts(layer)
    answer = {"A_shape": list(p.A.shape), "B_shape": list(p.B.shape), "bias": p.base.bias is not None}
    if answer["A_shape"] == [4, q["in"]] and answer["B_shape"] == [q["out"], 4] and answer["bias"]:
        _set(layer, W0=q["W0"], b=q["b"], A=q["A"], B=q["B"])
        with _no_grad():
            answer["out"] = _rows(forward(layer, _tensor(q["x"])))
    return answer


def _number(value):
    """A layer attribute (in_features, out_features, r) as a float when it is a number; None otherwise."""
    try:
        return float(value)
    except Exception:  # noqa: BLE001  missing, not a number, or a tensor of many numbers
        return None


def _merged(layer):
    try:
        return layer.merged_weight()
    except Exception as exc:  # noqa: BLE001  reported, judged as a wrong merge
        return describe(exc)


def _listed(merged):
    return merged.detach().double().tolist() if isinstance(merged, torch.Tensor) else str(merged)


def _formula(cls, q) -> dict:
    layer = make(cls, q["in"], q["out"], r=q["r"], alpha=q["alpha"], bias=q["bias"])
    layer.train(q["train"])
    answer = {"attrs": {name: _number(getattr(layer, name, None)) for name in ("in_features", "out_features", "r")}}
    answer["attrs"]["scaling"] = scaling_value(layer)  # as check 7 reads it
    _set(layer, W0=q["W0"], b=q["b"], A=q["A"], B=q["B"])
    merged = _merged(layer)  # kept as returned: read again at the end, after more calls
    lead, n_in, n_out = tuple(q["lead"]), q["in"], q["out"]
    x = laid_out(_tensor(q["x"]).reshape(*lead, n_in), q["contiguous"]).requires_grad_(True)
    g = _tensor(q["g"]).reshape(*lead, n_out)
    no_dropout = NoDropout if q["train"] else contextlib.nullcontext
    with no_dropout():
        out = forward(layer, x)
    answer["out_shape"], answer["out_dtype"], answer["in_dtype"] = list(out.shape), str(out.dtype), str(x.dtype)
    if list(out.shape) != [*lead, n_out]:
        return answer
    answer["out"] = _rows(out)
    if q["train"]:  # with autograd on, as in training: a layer may be random only then
        with NoDropout():  # many numbers per call: dropout at p = 0.01 shows within a few calls
            probe = torch.ones(64, n_in)
            first = forward(layer, probe).detach()
            answer["random"] = any(not torch.allclose(forward(layer, probe).detach(), first, rtol=1e-5, atol=1e-6)
                                   for _ in range(32))
            if answer["random"]:  # dropout written by hand: right on average, or not
                draws = torch.stack([forward(layer, x.detach()).detach().double() for _ in range(RANDOM_DRAWS)])
                answer["mean"] = _rows(draws.mean(0))
    p = parts(layer)
    before = {"A": p.A.detach().clone(), "B": p.B.detach().clone()}
    if out.requires_grad:
        for t in layer.parameters():
            t.grad = None
        (out * g).sum().backward()
        with _no_grad():
            for t in layer.parameters():
                if t.requires_grad and t.grad is not None:
                    t.sub_(t.grad)
    after = parts(layer)
    answer["grad_x"] = _rows(x.grad) if x.grad is not None else _rows(torch.zeros_like(x))
    answer["grad_A"] = (before["A"] - after.A.detach()).double().tolist()
    answer["grad_B"] = (before["B"] - after.B.detach()).double().tolist()
    _set(layer, W0=q["W0"], b=q["b"], A=q["A"], B=q["B"])
    with _no_grad(), no_dropout():
        first = forward(layer, x.detach())
        _set(layer, W0=q["W0_2"], A=q["A_2"], B=q["B_2"])  # as training and load_state_dict change them
        answer["merged_2"] = _listed(_merged(layer))
        answer["out_2"] = _rows(forward(layer, x.detach()))
    answer["no_grad_out"] = _rows(first)  # read after the second call: a reused output buffer shows here
    answer["merged"] = _listed(merged)
    return answer


def _train(cls, q) -> dict:
    torch.manual_seed(q["seed"])
    layer = make(cls, q["in"], q["out"], r=q["r"], alpha=q["alpha"], bias=q["bias"])
    _set(layer, W0=q["W0"], b=q["b"])
    layer.train()
    teacher = _tensor(q["W0"]) + _tensor(q["delta"])
    bias = _tensor(q["b"])
    trainable = [t for t in layer.parameters() if t.requires_grad]
    opt = Adam(trainable, lr=q["lr"])
    for _ in range(q["steps"]):
        x = torch.randn(q["rows"], q["in"])
        loss = F.mse_loss(forward(layer, x), x @ teacher.T + bias)
        if not loss.requires_grad:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    layer.eval()
    p = parts(layer)
    with _no_grad():
        held = forward(layer, _tensor(q["held"]))
    return {"trainable": sum(t.numel() for t in trainable), "base_weight": p.base.weight.detach().double().tolist(),
            "base_bias": None if p.base.bias is None else p.base.bias.detach().double().tolist(),
            "A": p.A.detach().double().tolist(), "B": p.B.detach().double().tolist(), "held_out": _rows(held)}


_ANSWER = {"init": _init, "defaults": _defaults, "formula": _formula, "train": _train}


class KitCalls:
    """A profile function (sys.setprofile) that notes every function of the kit's checks/ that runs inside the
    layer: entered while one of the layer's own frames (neither the kit's, torch's nor the standard library's) is
    on the stack above where answering began. A layer that hands its work to the kit's own formula
    (checks.oracle.formula, the lab's forward, sanity's merge) is the kit's code, however its class was written.
    The kit's dropout switch (a TorchFunctionMode) runs inside every forward by design, and a notebook's display()
    and get_ipython() stand-ins are the kit's only by where they live: both are left out. Threads the layer starts,
    and code compiled under another file's name, are not followed."""

    _LIBRARY = tuple({os.path.dirname(torch.__file__) + os.sep, os.path.dirname(os.__file__) + os.sep,
                      sysconfig.get_paths()["purelib"] + os.sep, sysconfig.get_paths()["platlib"] + os.sep})

    _ALLOWED = {NoDropout.__torch_function__.__code__}  # the kit's dropout switch, inside every forward by design

    def __init__(self):
        self.kit = os.path.dirname(__file__) + os.sep
        self.stand_ins = os.path.join(self.kit, "loading.py")  # a notebook's display() and get_ipython()
        self.found: list[str] = []
        self.start = None

    def __call__(self, frame, event, arg):
        if event != "call":
            return
        code = frame.f_code
        kit = code.co_filename.startswith(self.kit) or str(frame.f_globals.get("__name__", "")).startswith("checks.")
        if not kit or code in self._ALLOWED or code.co_filename == self.stand_ins:
            return
        f = frame.f_back
        while f is not None and f is not self.start:
            name = f.f_code.co_filename
            if not (name.startswith(self.kit) or name.startswith(self._LIBRARY) or name.startswith("<frozen")):
                what = f"checks/{os.path.basename(code.co_filename)}: {getattr(code, 'co_qualname', code.co_name)}"
                if what not in self.found:
                    self.found.append(what)
                return
            f = f.f_back

    @contextlib.contextmanager
    def watching(self, guard=None):
        """Profile this thread while the body runs; `guard` (checks/guard.py) lets the kit set it and no one else."""
        allowed = guard.setting_hooks if guard is not None else contextlib.nullcontext
        answering = guard.watching if guard is not None else contextlib.nullcontext
        self.start = sys._getframe(2)  # the caller of `with watching()`: frames below it are not the layer's
        with answering():
            with allowed():
                sys.setprofile(self)
            try:
                yield self
            finally:
                with allowed():
                    sys.setprofile(None)


def answer(cls, question: dict, guard=None) -> dict:
    """What the layer does on one question; {"error": ...} when it raises; "kit_code" lists the kit's functions
    that ran inside the layer (KitCalls)."""
    calls = KitCalls()
    with one_thread(), torch.random.fork_rng(devices=[]), calls.watching(guard):
        torch.manual_seed(0)
        try:
            found = _ANSWER[question["kind"]](cls, question)
        except Mistake as exc:
            found = {"error": cut(exc.message)}
        except (Exception, SystemExit) as exc:  # learner code failing where nothing foresaw it
            found = {"error": cut(describe(exc))}
    if calls.found:
        found["kit_code"] = calls.found[:5]
    return found
