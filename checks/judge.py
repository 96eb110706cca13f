"""The trusted judge: the questions the command line asks about a learner's layer, and its verdict on the answers.

The learner's code runs in the worker (checks/worker.py), and whatever runs there can be made to report anything.
So the verdict on checks 1–9 does not rest on what the worker's checks say. This side, which never runs learner
code and never imports torch, draws fresh questions for every run: its own A, B, W0, b, inputs x and upstream
gradients g, a teacher for a short training run, seeds for the init. The worker answers each with what the layer
did (its outputs, the change one gradient step makes to A and B, merged_weight(), the parameters after training),
and this side compares the answers with §4.1's formula, h = x W0ᵀ + b + (α/r)·x Aᵀ Bᵀ, computed here in plain
Python floats from its own numbers. Every number it sends is a multiple of 1/256 in [-0.5, 0.5), exact in float32
and in JSON. A submission can still say anything over the channel, but to pass it must answer like a correct LoRA
layer on inputs it could not predict: that is the exercise itself.

What is judged here, by check: 1 the count of trainable numbers; 2 the output at init equals base(x), and an
output keeps the input's dtype; 3 the base is bit for bit what it was after training; 4 shapes of A, B and the
output, the attributes, and the defaults r=4, α=8, bias=True; 5 merged_weight(), before and after W0, A and B
change in place; 6 a gradient reaches x, A and B; 7 the output and the gradients for x, A and B, with autograd on
and under torch.no_grad(), before and after the tensors change (a train-mode forward that is random: its mean over
many calls); 8 B zero, A finite, full rank, random, reproducible under a seed and another for the next layer
built; 9 the held-out loss after 200 Adam steps falls below a quarter of its start, from the layer's own output,
which must also be the formula's for the A and B it ended with. Checks 10 and 11 (no dense ΔW, the input left as
it was) are about how forward computes, which only the worker can watch. Answers are read defensively: anything
but floats where numbers belong, a NaN or an infinity, is off.
"""
from __future__ import annotations

import math
import random
import secrets
from dataclasses import dataclass, field
from operator import mul

from checks.verdict import Finding

TOLERANCE = 1e-4  # the largest difference allowed, relative to 1 + the largest expected value (float32 vs exact)
TRAIN_STEPS, TRAIN_LR, TRAIN_ROWS = 200, 3e-2, 64
RANDOM_SLACK = 0.25  # a train-mode forward that is random: its mean may be off by this much of the low-rank term


# ------------------------------------------------------------------------------------------ plain-float algebra

def _t(m):
    return [list(col) for col in zip(*m)]


def _mm(x, y):
    """x @ y for lists of rows."""
    cols = _t(y)
    return [[sum(map(mul, row, col)) for col in cols] for row in x]


def _axpy(a, x, y):
    """a·x + y, elementwise on matrices."""
    return [[a * u + v for u, v in zip(rx, ry)] for rx, ry in zip(x, y)]


def _plus_bias(m, b):
    return [[u + v for u, v in zip(row, b)] for row in m] if b is not None else m


def formula(x, W0, b, A, B, s, g):
    """h = x W0ᵀ + b + s·x Aᵀ Bᵀ and the gradients of sum(h · g) for x, A and B, all as lists of rows."""
    if not x:  # an empty batch: every gradient is zero
        return [], [], [[0.0] * len(A[0]) for _ in A], [[0.0] * len(A) for _ in B]
    u = _mm(x, _t(A))  # (rows, r)
    out = _plus_bias(_axpy(s, _mm(u, _t(B)), _mm(x, _t(W0))), b)
    gB = _mm(g, B)  # (rows, r)
    grad_x = _axpy(s, _mm(gB, A), _mm(g, W0))
    grad_A = [[s * v for v in row] for row in _mm(_t(gB), x)]
    grad_B = [[s * v for v in row] for row in _mm(_t(g), u)]
    return out, grad_x, grad_A, grad_B


def merge(W0, A, B, s):
    return _axpy(s, _mm(B, A), W0)


def rank(m) -> int:
    """The rank of a small matrix, by Gaussian elimination with partial pivoting."""
    rows = [list(map(float, row)) for row in m]
    scale = max((abs(v) for row in rows for v in row), default=0.0)
    found, col, width = 0, 0, len(rows[0]) if rows else 0
    while found < len(rows) and col < width:
        pivot = max(range(found, len(rows)), key=lambda i: abs(rows[i][col]))
        if abs(rows[pivot][col]) <= 1e-9 * scale:
            col += 1
            continue
        rows[found], rows[pivot] = rows[pivot], rows[found]
        for i in range(found + 1, len(rows)):
            f = rows[i][col] / rows[found][col]
            rows[i] = [a - f * c for a, c in zip(rows[i], rows[found])]
        found, col = found + 1, col + 1
    return found


def _shape(m) -> tuple:
    """The shape of nested lists of floats (what a tensor's tolist() gives), or () for a float; None when ragged
    or holding anything else (ints, bools, strings, None)."""
    if isinstance(m, float):
        return ()
    if not isinstance(m, list) or not m:
        return (0,) if m == [] else None
    inner = {_shape(v) for v in m}
    if len(inner) != 1 or None in inner:
        return None
    return (len(m), *inner.pop())


def gap(got, want) -> float:
    """Largest difference relative to 1 + the largest expected value; infinite for another shape, or when either
    side holds a NaN or an infinity."""
    if _shape(got) != _shape(want):
        return math.inf
    flat_got, flat_want = _flat(got), _flat(want)
    if not flat_want:
        return 0.0
    if not all(map(math.isfinite, flat_got)) or not all(map(math.isfinite, flat_want)):
        return math.inf
    worst = max(abs(u - v) for u, v in zip(flat_got, flat_want))
    return worst / (1.0 + max(map(abs, flat_want)))


def _off(got, want, tolerance: float = TOLERANCE) -> bool:
    """Whether `got` is not `want`, within `tolerance` (written so that anything unreadable is off)."""
    return not gap(got, want) <= tolerance


def _flat(m):
    if isinstance(m, list):
        return [v for row in m for v in _flat(row)]
    return [m]


def _mse(a, b) -> float:
    flat_a, flat_b = _flat(a), _flat(b)
    return sum((u - v) ** 2 for u, v in zip(flat_a, flat_b)) / len(flat_b)


# ------------------------------------------------------------------------------------------ questions


def _vector(rng, n):
    """n numbers from -0.5 to 127/256, each a multiple of 1/256."""
    bits = rng.getrandbits(8 * n) if n else 0
    return [((bits >> (8 * i)) & 255) / 256 - 0.5 for i in range(n)]


def _matrix(rng, rows, cols):
    return [_vector(rng, cols) for _ in range(rows)]


def _call(q) -> str:
    return f"LoRALinear({q['in']}, {q['out']}, r={q['r']}, alpha={q['alpha']}, bias={q['bias']})"


def _formula_question(rng, n_in, n_out, r, alpha, bias, lead, train, contiguous) -> dict:
    rows = math.prod(lead)
    return {"kind": "formula", "in": n_in, "out": n_out, "r": r, "alpha": alpha, "bias": bias, "lead": list(lead),
            "train": train, "contiguous": contiguous, "W0": _matrix(rng, n_out, n_in),
            "b": _vector(rng, n_out) if bias else None, "A": _matrix(rng, r, n_in), "B": _matrix(rng, n_out, r),
            "x": _matrix(rng, rows, n_in), "g": _matrix(rng, rows, n_out),
            "W0_2": _matrix(rng, n_out, n_in), "A_2": _matrix(rng, r, n_in), "B_2": _matrix(rng, n_out, r)}


def _draw_formula(rng, i: int) -> dict:
    """The i-th drawn configuration: in ≠ out up to 64; the first is wide (in > 32) with r from 5 to 8, every fourth
    from the second on is full rank; r ∤ α; bias on and off; 2-D to 4-D input, strided or not; train and eval."""
    n_in = rng.randint(33, 64) if i == 0 else rng.randint(2, 64)
    n_out = rng.choice([k for k in range(8 if i == 0 else 2, 65) if k != n_in])
    low = min(n_in, n_out)
    r = rng.randint(5, 8) if i == 0 else low if i % 4 == 1 else rng.randint(1, min(low, 8))
    alpha = rng.randint(1, 32)
    if r > 1 and alpha % r == 0:
        alpha += 1  # r does not divide α
    ndim = 2 + i % 3
    lead = ((rng.choice([1, 3, 17, 33]),) if ndim == 2 else (rng.randint(1, 4), rng.randint(2, 9)) if ndim == 3
            else (2, rng.randint(1, 3), rng.randint(2, 5)))
    return _formula_question(rng, n_in, n_out, r, alpha, i % 2 == 1, lead, train=i % 4 in (1, 2),
                             contiguous=i % 3 != 1)


@dataclass
class Exam:
    """One run's questions (sent to the worker) and what a correct layer answers (kept here)."""

    questions: list = field(default_factory=list)
    expected: list | None = None  # what a correct layer answers, per question: see prepare()

    @classmethod
    def draw(cls, seed: int | None = None, formulas: int = 8) -> Exam:
        rng = random.Random(secrets.randbits(64) if seed is None else seed)
        qs = []
        n_in, n_out, r = rng.randint(8, 24), rng.randint(6, 20), rng.randint(2, 5)
        seeds = rng.sample(range(1, 1 << 30), 2)
        qs.append({"kind": "init", "in": n_in, "out": n_out, "r": r, "alpha": rng.randint(1, 16), "bias": True,
                   "seeds": [seeds[0], seeds[1], seeds[0]], "W0": _matrix(rng, n_out, n_in),
                   "b": _vector(rng, n_out), "x": _matrix(rng, 5, n_in)})
        n_in, n_out = rng.randint(5, 20), rng.randint(5, 20)
        qs.append({"kind": "defaults", "in": n_in, "out": n_out, "W0": _matrix(rng, n_out, n_in),
                   "b": _vector(rng, n_out), "A": _matrix(rng, 4, n_in), "B": _matrix(rng, n_out, 4),
                   "x": _matrix(rng, 3, n_in)})
        qs += [_draw_formula(rng, i) for i in range(formulas)]
        qs.append(_formula_question(rng, 12, 7, 3, 4, False, (3, 50), train=False, contiguous=False))  # 150 rows
        qs.append(_formula_question(rng, 6, 6, 2, 5, True, (4,), train=False, contiguous=True))  # square, as Wq, Wv
        qs.append(_formula_question(rng, 9, 5, 2, 3, True, (), train=False, contiguous=True))  # one 1-D input
        qs.append(_formula_question(rng, 7, 4, 2, 4, False, (0,), train=True, contiguous=True))  # an empty batch
        lift = _matrix(rng, 12, 2)
        qs.append({"kind": "train", "in": 16, "out": 12, "r": 2, "alpha": 4, "bias": True, "seed": rng.randint(1, 1 << 30),
                   "steps": TRAIN_STEPS, "lr": TRAIN_LR, "rows": TRAIN_ROWS, "W0": _matrix(rng, 12, 16),
                   "b": _vector(rng, 12), "delta": _mm(lift, [[4 * v for v in row] for row in _matrix(rng, 2, 16)]),
                   "held": _matrix(rng, 64, 16)})
        return cls(qs)

    def prepare(self) -> None:
        """Compute what a correct layer answers (the command line does it while the worker imports torch)."""
        if self.expected is None:
            self.expected = [_EXPECT[q["kind"]](q) for q in self.questions]

    def judge(self, answers: list) -> dict[int, Finding]:
        """{check id: the first Finding against it}, from the worker's answers, one per question in order."""
        self.prepare()
        found: dict[int, Finding] = {}
        for q, want, a in zip(self.questions, self.expected, answers):
            for check, finding in _JUDGES[q["kind"]](q, want, a if isinstance(a, dict) else {"error": "no answer"}):
                found.setdefault(check, finding)
        if len(answers) < len(self.questions):
            found.setdefault(7, Finding("the check process answered fewer questions than were asked",
                                        "run the file by hand; --verbose shows its output"))
        return found


# ------------------------------------------------------------------------------------------ judging the answers

def _error(q, a, checks):
    """When the layer raised while answering: one finding for each of `checks`."""
    where = _call(q) if "r" in q else f"LoRALinear({q['in']}, {q['out']})"
    finding = Finding(f"answering the kit's question about {where}, the layer raised {a['error']}",
                      "run your layer by hand on such a call")
    return [(c, finding) for c in checks]


def _expect_init(q):
    return {"out": _plus_bias(_mm(q["x"], _t(q["W0"])), q["b"])}


def _judge_init(q, want, a):
    if "error" in a:
        return _error(q, a, (2, 8))
    found = []
    As = a.get("A") if isinstance(a.get("A"), list) else []
    Bs = a.get("B") if isinstance(a.get("B"), list) else []
    shape_A, shape_B = (q["r"], q["in"]), (q["out"], q["r"])
    if len(As) != 4 or len(Bs) != 4 or any(_shape(m) != shape_A for m in As) or any(_shape(m) != shape_B for m in Bs):
        return [(4, Finding(f"at {_call(q)}, A and B are not (r, in) = {shape_A} and (out, r) = {shape_B}",
                            "A is (r, in_features) and B is (out_features, r)"))]
    A1, A2, A1_again, A_next = As
    if any(v != 0 for v in _flat(Bs[0])):
        found.append((8, Finding("B does not start at zero", "self.B = nn.Parameter(torch.zeros(out_features, r)) "
                                                             "(§4.1)")))
    flat = _flat(A1)
    if not all(math.isfinite(v) for v in flat):
        found.append((8, Finding("A starts with NaN or infinite values", "draw A at random: torch.randn(r, in) / r")))
    elif rank(A1) < min(shape_A):
        found.append((8, Finding(f"A starts with rank {rank(A1)} of a possible {min(shape_A)}",
                                 "draw every entry of A independently, e.g. torch.randn(r, in_features) / r")))
    elif A1 == A2:
        found.append((8, Finding("A is the same under two different seeds: it is not random",
                                 "draw A with torch: torch.randn(r, in_features) / r")))
    elif A1 != A1_again:
        found.append((8, Finding("A differs between two layers built after the same torch.manual_seed",
                                 "draw A with torch's generator: torch.randn(r, in_features) / r")))
    elif A_next == A1_again:
        found.append((8, Finding("two layers built one after the other start with the same A: every adapter in a "
                                 "model would start alike", "draw A from torch's global generator in __init__: "
                                                            "torch.randn(r, in_features) / r")))
    if _off(a.get("out"), want["out"]):
        why = ": B is not zero" if any(v != 0 for v in _flat(Bs[0])) else ""
        found.append((2, Finding(f"at init, with base.weight and base.bias set to the kit's values, the output of "
                                 f"{_call(q)} is not base(x){why}", "initialise B with torch.zeros(out_features, r) "
                                                                   "and A at random (§4.1)")))
    return found


def _expect_defaults(q):
    return {"out": formula(q["x"], q["W0"], q["b"], q["A"], q["B"], 2.0, [[0.0] * q["out"] for _ in q["x"]])[0]}


def _judge_defaults(q, want, a):
    if "error" in a:
        return _error(q, a, (4,))
    n_in, n_out = q["in"], q["out"]
    if a.get("A_shape") != [4, n_in] or a.get("B_shape") != [n_out, 4] or a.get("bias") is not True:
        return [(4, Finding(f"LoRALinear({n_in}, {n_out}) with the defaults left out has A {a.get('A_shape')}, "
                            f"B {a.get('B_shape')}, bias {a.get('bias')}; expected r=4, bias=True",
                            "def __init__(self, in_features, out_features, r=4, alpha=8, bias=True)"))]
    if _off(a.get("out"), want["out"]):
        return [(4, Finding(f"LoRALinear({n_in}, {n_out}) with the defaults left out does not scale by α/r = 8/4 = 2",
                            "the defaults are r=4, alpha=8: self.scaling = alpha / r"))]
    return []


def _expect_formula(q):
    s = q["alpha"] / q["r"]
    out, grad_x, grad_A, grad_B = formula(q["x"], q["W0"], q["b"], q["A"], q["B"], s, q["g"])
    zeros = [[0.0] * q["out"] for _ in q["x"]]
    base = _plus_bias(_mm(q["x"], _t(q["W0"])), q["b"]) if q["x"] else []
    low_max = max((abs(u - v) for ro, rb in zip(out, base) for u, v in zip(ro, rb)), default=0.0)
    return {"merged": merge(q["W0"], q["A"], q["B"], s), "merged_2": merge(q["W0_2"], q["A_2"], q["B_2"], s),
            "out": out, "grad_x": grad_x, "grad_A": grad_A, "grad_B": grad_B, "low_max": low_max,
            "out_max": max(map(abs, _flat(out)), default=0.0),
            "out_2": formula(q["x"], q["W0_2"], q["b"], q["A_2"], q["B_2"], s, zeros)[0]}


def _judge_formula(q, want, a):
    if "error" in a:
        return _error(q, a, (7,))
    s = q["alpha"] / q["r"]
    found = []
    where = f"{_call(q)}, input {(*q['lead'], q['in'])}{'' if q['contiguous'] else ' (non-contiguous)'}, " \
            f"{'train' if q['train'] else 'eval'} mode"
    attrs = a.get("attrs") if isinstance(a.get("attrs"), dict) else {}
    for name in ("in_features", "out_features", "r"):
        if attrs.get(name) != q[{"in_features": "in", "out_features": "out", "r": "r"}[name]]:
            found.append((4, Finding(f"at {_call(q)}, layer.{name} is {attrs.get(name)!r}",
                                     f"keep the constructor's arguments: self.{name} = {name}")))
    scaling = attrs.get("scaling")
    if not (isinstance(scaling, float) and abs(scaling - s) <= 1e-6 * s):
        found.append((7, Finding(f"at {_call(q)}, layer.scaling is {attrs.get('scaling')!r}; expected α/r = {s:.4g}",
                                 "self.scaling = alpha / r")))
    if _off(a.get("merged"), want["merged"]):
        found.append((5, Finding(f"at {_call(q)}, merged_weight() is not W0 + (α/r)·BA for the kit's W0, A and B "
                                 "(or a later call overwrote what it returned)",
                                 "return a new tensor: self.base.weight + self.scaling * (self.B @ self.A)")))
    elif _off(a.get("merged_2"), want["merged_2"]):
        found.append((5, Finding(f"at {_call(q)}, after W0, A and B change in place, merged_weight() does not follow "
                                 "them: it is cached", "compute W0 + (α/r)·BA from the current tensors on every call")))
    if a.get("out_shape") != [*q["lead"], q["out"]]:
        found.append((4, Finding(f"at {where}, the output has shape {a.get('out_shape')}; expected "
                                 f"{[*q['lead'], q['out']]}", "forward maps (..., in) to (..., out)")))
        return found
    if a.get("out_dtype") != a.get("in_dtype") or a.get("out_dtype") is None:
        found.append((2, Finding(f"at {where}, forward returns {a.get('out_dtype')} for a {a.get('in_dtype')} input",
                                 "return the output in the input's dtype: cast back with .to(x.dtype)")))
    if q["train"] and a.get("random"):  # dropout written by hand: its mean over many calls, within a quarter of
        if _off(a.get("mean"), want["out"], RANDOM_SLACK * want["low_max"] / (1.0 + want["out_max"])):  # the term
            found.append((7, Finding(f"at {where}, forward is random in train mode, and its mean over many calls is "
                                     "not x W0ᵀ + b + (α/r)·x Aᵀ Bᵀ for the kit's tensors",
                                     "apply dropout to the low-rank input only, rescaled by 1/(1 - p)")))
        return found  # gradients are judged in eval mode and by training (see README's threat model)
    if _off(a.get("out"), want["out"]):
        found.append((7, Finding(f"at {where}, the output is not x W0ᵀ + b + (α/r)·x Aᵀ Bᵀ for the kit's tensors",
                                 "forward = self.base(x) + self.scaling * ((x @ self.A.T) @ self.B.T)")))
        return found
    for name in ("x", "A", "B"):
        got, grad = a.get(f"grad_{name}"), want[f"grad_{name}"]
        if got is not None and all(v == 0 for v in _flat(got)) and any(v != 0 for v in _flat(grad)):
            found.append((6, Finding(f"at {where}, no gradient reaches {name}",
                                     f"{name} must take part in forward through autograd")))
        elif _off(got, grad):
            found.append((7, Finding(f"at {where}, the gradient with respect to {name} is not the formula's",
                                     "let autograd differentiate forward")))
    if _off(a.get("no_grad_out"), want["out"]):
        found.append((7, Finding(f"at {where}, under torch.no_grad() the output is not the formula's, or a later "
                                 "call overwrote it", "compute the same thing with or without autograd, and return "
                                                      "a new tensor from every call")))
    elif _off(a.get("out_2"), want["out_2"]):
        found.append((7, Finding(f"at {where}, after W0, A and B change in place, forward does not follow them: it "
                                 "reads a copy or a cache", "read self.base, self.A and self.B at call time")))
    return found


def _expect_train(q):
    target = _plus_bias(_mm(q["held"], _t(_axpy(1.0, q["delta"], q["W0"]))), q["b"])
    return {"target": target, "start": _mse(_plus_bias(_mm(q["held"], _t(q["W0"])), q["b"]), target)}


def _judge_train(q, want, a):
    if "error" in a:
        return _error(q, a, (3, 9))
    found = []
    if a.get("trainable") != q["r"] * (q["in"] + q["out"]):
        found.append((1, Finding(f"{_call(q)} trains {a.get('trainable')} numbers; A and B hold r·(in+out) = "
                                 f"{q['r'] * (q['in'] + q['out'])}", "train A and B only; freeze self.base")))
    if a.get("base_weight") != q["W0"] or a.get("base_bias") != q["b"]:
        found.append((3, Finding(f"after {q['steps']} Adam steps on {_call(q)}, base.weight or base.bias is not "
                                 "what it was", "freeze the pretrained layer: self.base.requires_grad_(False)")))
    A, B, held = a.get("A"), a.get("B"), a.get("held_out")
    s = q["alpha"] / q["r"]
    if _shape(A) != (q["r"], q["in"]) or _shape(B) != (q["out"], q["r"]) or _shape(held) != (len(q["held"]), q["out"]):
        return found + [(9, Finding("after training, A, B or the held-out output has the wrong shape", ""))]
    zeros = [[0.0] * q["out"] for _ in q["held"]]
    if _off(held, formula(q["held"], q["W0"], q["b"], A, B, s, zeros)[0]):
        found.append((7, Finding("after training, the layer's output is not the formula's for the A and B it holds",
                                 "forward = self.base(x) + self.scaling * ((x @ self.A.T) @ self.B.T)")))
        return found
    start, end = want["start"], _mse(held, want["target"])
    if not end <= 0.25 * start:
        found.append((9, Finding(f"in the kit's own run ({q['steps']} Adam steps on {_call(q)}) the held-out loss "
                                 f"went from {start:.3g} to {end:.3g}, not below a quarter of its start",
                                 "check that forward uses A and B, that both train, and that A starts random; "
                                 "LoRA dropout of p = 0.5 or more also leaves this short run short of it")))
    return found


_EXPECT = {"init": _expect_init, "defaults": _expect_defaults, "formula": _expect_formula, "train": _expect_train}
_JUDGES = {"init": _judge_init, "defaults": _judge_defaults, "formula": _judge_formula, "train": _judge_train}
