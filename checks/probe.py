"""The probe: builds fresh layers from the learner's class and reaches A, B and base through the interface.

Every way a learner's code can go wrong on the way (a constructor that raises, a missing attribute, a forward
that returns None) becomes a `Mistake` with a short message and a hint, never a traceback from inside the kit.
"""
from __future__ import annotations

import functools
import os
import sysconfig
import traceback
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

# Bound before any learner code runs: a learner file that patches torch.equal cannot fake a pass.
_equal, _allclose = torch.equal, torch.allclose

# Frames from these folders are the kit's or a library's; the rest are the learner's.
_NOT_LEARNER = tuple(
    os.path.realpath(p) + os.sep
    for p in {os.path.dirname(os.path.abspath(__file__)), os.path.dirname(torch.__file__), sysconfig.get_paths()["stdlib"]}
)


class Mistake(Exception):
    """The layer broke a rule of a check: `message` says what was seen, `hint` how to fix it."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message, self.hint = message, hint


class Unusable(Mistake):
    """The layer cannot be built or run at all, so no check can say anything about it."""


def describe(exc: BaseException) -> str:
    """`TypeError: boom (line 12 of layer.py: return x @ self.A)`, naming the learner's line where there is one."""
    text = f"{type(exc).__name__}: {exc}".rstrip(": ")
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not os.path.realpath(f.filename).startswith(_NOT_LEARNER)]
    if frames:
        f = frames[-1]
        code = f": {f.line.strip()}" if f.line else ""
        text += f" (line {f.lineno} of {os.path.basename(f.filename)}{code})"
    return text


def call_text(in_features, out_features, r, alpha, bias) -> str:
    return f"LoRALinear({in_features}, {out_features}, r={r}, alpha={alpha}, bias={bias})"


def build(cls, call: str, *args, **kwargs) -> nn.Module:
    """cls(*args, **kwargs), or a Mistake naming `call` (Unusable when the stub is still unfilled)."""
    try:
        layer = cls(*args, **kwargs)
    except NotImplementedError as exc:
        raise Unusable(f"{call} raised NotImplementedError: the LoRALinear stub is not filled in yet",
                       "write __init__ and forward in the stub cell (Part 3), run it, then run the checks again") from exc
    except Exception as exc:
        raise Mistake(f"{call} raised {describe(exc)}",
                      "the constructor takes (in_features, out_features, r=4, alpha=8, bias=True)") from exc
    if not isinstance(layer, nn.Module):
        raise Mistake(f"{call} made a {type(layer).__name__}, not an nn.Module", "subclass torch.nn.Module")
    return layer


def make(cls, in_features, out_features, r=4, alpha=8, bias=True) -> nn.Module:
    """A fresh layer, or a Mistake that names the call that failed."""
    return build(cls, call_text(in_features, out_features, r, alpha, bias),
                  in_features, out_features, r=r, alpha=alpha, bias=bias)


@dataclass
class Parts:
    A: torch.Tensor  # (r, in)
    B: torch.Tensor  # (out, r)
    base: nn.Linear  # frozen W0 (out, in) and bias b (out,)


def parts(layer) -> Parts:
    """A, B and base, found by attribute (they may be properties), each checked for its kind."""
    found = {}
    for name in ("A", "B", "base"):
        try:
            found[name] = getattr(layer, name)
        except AttributeError:
            raise Mistake(f"the layer has no attribute {name!r}",
                          "the interface names the factors A  # (r, in) and B  # (out, r), and the frozen "
                          "nn.Linear `base`; wrap or rename yours so these names reach them") from None
        except Exception as exc:
            raise Mistake(f"reading layer.{name} raised {describe(exc)}",
                          f"make layer.{name} a plain attribute (or a property that cannot fail)") from exc
    for name in ("A", "B"):
        if not isinstance(found[name], torch.Tensor):
            raise Mistake(f"layer.{name} is a {type(found[name]).__name__}, not a tensor",
                          f"make {name} an nn.Parameter holding the matrix itself")
    if not isinstance(found["base"], nn.Linear):
        raise Mistake(f"layer.base is a {type(found['base']).__name__}, not an nn.Linear",
                      "keep the pretrained layer as self.base = nn.Linear(in_features, out_features, bias=bias)")
    return Parts(**found)


def forward(layer, x: torch.Tensor, guard: bool = True) -> torch.Tensor:
    """layer(x), with anything but a tensor turned into a Mistake.

    The layer gets a copy of x, so that a forward that writes into its input cannot change what a check compares
    with; such a forward is named here, by the first check that calls it."""
    given = x.clone()
    try:
        out = layer(given)
    except NotImplementedError as exc:
        raise Unusable("forward raised NotImplementedError: the stub's forward is not written yet",
                       "write forward in the stub cell (Part 3)") from exc
    except Exception as exc:
        raise Mistake(f"forward on an input of shape {tuple(x.shape)} raised {describe(exc)}",
                      "forward takes any input of shape (..., in_features), contiguous or not; run your layer "
                      "on such an input by hand to see the error") from exc
    if guard and not same_values(x, given):
        raise Mistake("forward changed its input tensor in place: the caller's x is not what it passed in",
                      "use out-of-place ops on x (x * s, not x.mul_(s); x = x + …, not x += …)")
    if out is None:
        raise Mistake("forward returned None", "end forward with `return base_out + self.scaling * lora_out`")
    if not isinstance(out, torch.Tensor):
        raise Mistake(f"forward returned a {type(out).__name__}, not a tensor", "return the output tensor itself")
    return out


def same_values(before: torch.Tensor, after: torch.Tensor) -> bool:
    """Equal in shape, dtype and every value, NaN included where both are NaN."""
    if before.shape != after.shape or before.dtype != after.dtype:
        return False
    if before.is_floating_point():
        return _allclose(before.detach(), after.detach(), rtol=0, atol=0, equal_nan=True)
    return _equal(before, after)


def smoke(cls) -> None:
    """Build LoRALinear(8, 6) with its defaults and run one forward; raise Unusable if that much does not work."""
    try:
        forward(build(cls, "LoRALinear(8, 6)", 8, 6), torch.randn(3, 8), guard=False)
    except Unusable:
        raise
    except Mistake as exc:
        raise Unusable(exc.message, exc.hint) from exc


class Adam:
    """Adam (Kingma & Ba, 2015) with torch.optim.Adam's defaults, for the checks' training run and the lab.

    torch.optim imports torch._dynamo on an optimizer's first step, 1.5-2 s here: more than the rest of the
    checks together (they aim to answer within about 1.3× a bare `import torch`), and most of the lab's share of
    the notebook's time. tests/test_checks.py holds it to torch.optim.Adam's steps and moments; the kit never
    imports torch._dynamo (tests/test_notebook.py).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lr, self.betas, self.eps, self.t = list(params), lr, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in self.params]  # first moment
        self.v = [torch.zeros_like(p) for p in self.params]  # second moment

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self):
        (b1, b2), self.t = self.betas, self.t + 1
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denom = (v / (1 - b2 ** self.t)).sqrt_().add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / (1 - b1 ** self.t))


@dataclass
class ToyRun:
    """A short training run on the toy task: the frozen base plus a rank-2 teacher delta."""

    layer: nn.Module
    snapshot: list  # clones of base.weight and base.bias, taken before the first step
    losses: list  # training loss at each step
    start_loss: float  # on a held-out batch in eval mode (no dropout), before and after training
    end_loss: float


@functools.lru_cache(maxsize=4)  # checks 3 and 9 share one run per class
def toy_run(cls, steps: int = 200) -> ToyRun:
    """Train a fresh LoRALinear(16, 12, r=2, alpha=4) with Adam on what requires grad, as the notebook does."""
    torch.manual_seed(0)
    layer = make(cls, 16, 12, r=2, alpha=4)
    p = parts(layer)
    with torch.no_grad():
        teacher = p.base.weight.detach() + 0.3 * (torch.randn(12, 2) @ torch.randn(2, 16))  # reachable at rank 2
        bias = p.base.bias.detach()
    snapshot = [t.detach().clone() for t in (p.base.weight, p.base.bias)]
    trainable = [q for q in layer.parameters() if q.requires_grad]
    if not trainable:
        raise Mistake("the layer has no trainable parameters, so nothing can learn",
                      "A and B must be nn.Parameter with requires_grad=True")
    x_held = torch.randn(256, 16)

    def held_out_loss() -> float:  # eval mode: LoRA dropout would add noise that is not a fitting error
        layer.eval()
        with torch.no_grad():
            loss = F.mse_loss(forward(layer, x_held), x_held @ teacher.T + bias).item()
        layer.train()
        return loss

    start, opt, losses = held_out_loss(), Adam(trainable, lr=1e-2), []
    for _ in range(steps):
        x = torch.randn(64, 16)
        loss = F.mse_loss(forward(layer, x), x @ teacher.T + bias)
        if not loss.requires_grad:
            raise Mistake("the toy loss carries no gradient, so training cannot start",
                          "the low-rank path must stay in the autograd graph: no .detach() or torch.no_grad() "
                          "in forward")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return ToyRun(layer, snapshot, losses, start, held_out_loss())
