"""Tests of the reference LoRALinear against the dense formula x @ (W0 + (α/r)·B@A).T + b, computed in float64."""
import copy

import pytest
import torch

from solution import LoRALinear

# (in, out, r, alpha, bias, leading dims of x): 1-D, 2-D and 3-D inputs, bias on and off, r not dividing α.
CASES = [
    (16, 12, 4, 8, True, (5,)),
    (10, 6, 3, 8, False, (7,)),
    (9, 13, 2, 5, True, (2, 3)),
    (8, 8, 3, 4, False, (4, 1)),
    (5, 7, 1, 3, True, ()),
]


def trained_layer(n_in, n_out, r, alpha, bias, seed=0) -> LoRALinear:
    """A float64 layer whose A and B are random and non-zero, so the low-rank path shows in every output."""
    torch.manual_seed(seed)
    layer = LoRALinear(n_in, n_out, r=r, alpha=alpha, bias=bias).double()
    with torch.no_grad():
        layer.A.copy_(torch.randn(r, n_in))
        layer.B.copy_(torch.randn(n_out, r))
    return layer


def dense_formula(layer: LoRALinear, x, alpha, r):
    """h = x (W0 + (α/r)·B A)ᵀ + b, from the layer's tensors but none of its code."""
    W = layer.base.weight.detach() + (alpha / r) * (layer.B.detach() @ layer.A.detach())
    b = layer.base.bias.detach() if layer.base.bias is not None else 0
    return x @ W.T + b


@pytest.mark.parametrize("n_in, n_out, r, alpha, bias, lead", CASES)
def test_forward_equals_the_dense_formula(n_in, n_out, r, alpha, bias, lead):
    layer = trained_layer(n_in, n_out, r, alpha, bias)
    x = torch.randn(*lead, n_in, dtype=torch.float64)
    out = layer(x)
    assert out.shape == (*lead, n_out)
    torch.testing.assert_close(out, dense_formula(layer, x, alpha, r), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n_in, n_out, r, alpha, bias, lead", CASES)
def test_merged_weight_gives_the_same_output_and_leaves_base_alone(n_in, n_out, r, alpha, bias, lead):
    layer = trained_layer(n_in, n_out, r, alpha, bias)
    w0 = layer.base.weight.clone()
    x = torch.randn(*lead, n_in, dtype=torch.float64)
    merged = torch.nn.functional.linear(x, layer.merged_weight(), layer.base.bias)
    torch.testing.assert_close(merged, layer(x), rtol=1e-12, atol=1e-12)
    assert torch.equal(layer.base.weight, w0)


def values_and_gradients(layer, forward, x, grad_out):
    x = x.clone().requires_grad_(True)
    out = forward(layer, x)
    out.backward(grad_out)
    return out.detach(), layer.A.grad, layer.B.grad, x.grad


@pytest.mark.parametrize("n_in, n_out, r, alpha, bias, lead", CASES)
def test_fast_forward_equals_the_teaching_form(n_in, n_out, r, alpha, bias, lead):
    """forward (fused scale-and-add) and forward_plain agree on h and on the gradients of A, B and x."""
    fast = trained_layer(n_in, n_out, r, alpha, bias)
    plain = copy.deepcopy(fast)
    x = torch.randn(*lead, n_in, dtype=torch.float64)
    grad_out = torch.randn(*lead, n_out, dtype=torch.float64)
    got = values_and_gradients(fast, LoRALinear.forward, x, grad_out)
    want = values_and_gradients(plain, LoRALinear.forward_plain, x, grad_out)
    for name, g, w in zip(("h", "A.grad", "B.grad", "x.grad"), got, want):
        assert g is not None and w is not None, f"{name} is missing"
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")
    assert fast.base.weight.grad is None and plain.base.weight.grad is None


def test_forward_is_the_same_in_float32():
    """The fused path in the dtype people train in: within float32 rounding of the float64 formula."""
    layer = trained_layer(64, 48, 8, 16, True).float()
    x = torch.randn(3, 5, 64)
    expected = dense_formula(copy.deepcopy(layer).double(), x.double(), 16, 8)
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-4, atol=1e-4)
