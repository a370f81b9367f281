"""Conv + fixed batch norm folded into one convolution (detkit.layers.fold, ConvNormAct)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detkit.layers import ConvNormAct
from detkit.layers.fold import conv_norm_folded, folded_conv_parameters
from detkit.models import configure_kernels


def randomise_norm(norm: nn.Module, seed: int = 0) -> nn.Module:
    """Statistics and affine parameters far from the identity, as after ImageNet training."""
    g = torch.Generator().manual_seed(seed)
    c = norm.running_mean.numel()
    with torch.no_grad():
        norm.running_mean.copy_(torch.randn(c, generator=g))
        norm.running_var.copy_(torch.rand(c, generator=g) * 3 + 0.05)
        if norm.weight is not None:
            norm.weight.copy_(torch.randn(c, generator=g))
            norm.bias.copy_(torch.randn(c, generator=g))
    return norm


def block(norm="frozen_bn", seed=0, **kwargs) -> ConvNormAct:
    torch.manual_seed(seed)
    kwargs.setdefault("act", "relu")
    module = ConvNormAct(kwargs.pop("in_channels", 8), kwargs.pop("out_channels", 16), **kwargs, norm=norm)
    randomise_norm(module.norm, seed)
    return module.eval()


def unfolded(module: ConvNormAct, x: torch.Tensor) -> torch.Tensor:
    """The module's output with `fold_bn=False` (conv and norm as two ops)."""
    module.fold_bn = False
    try:
        return module(x)
    finally:
        module.fold_bn = True


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 3},
        {"kernel_size": 1, "stride": 2},
        {"kernel_size": 3, "dilation": 2, "bias": True},
        {"kernel_size": 3, "groups": 4, "act": None},
        {"kernel_size": 7, "stride": 2, "in_channels": 3},
    ],
)
def test_folded_equals_conv_then_norm(kwargs):
    module = block(**kwargs)
    x = torch.randn(2, module.in_channels, 23, 37)
    with torch.no_grad():
        assert conv_norm_folded(module.conv, module.norm, x) is not None
        got, want = module(x), unfolded(module, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_folded_parameters_in_float64_match_the_definition():
    module = block(bias=True).double()
    conv, norm = module.conv, module.norm
    weight, bias = folded_conv_parameters(conv, norm)
    scale = norm.weight / (norm.running_var + norm.eps).sqrt()
    torch.testing.assert_close(weight, conv.weight * scale[:, None, None, None])
    torch.testing.assert_close(bias, (conv.bias - norm.running_mean) * scale + norm.bias)
    assert weight.dtype == torch.float64 and not weight.requires_grad


def test_eval_batchnorm_folds_training_batchnorm_does_not():
    module = block(norm="bn")
    x = torch.randn(2, 8, 16, 16)
    with torch.no_grad():
        assert conv_norm_folded(module.conv, module.norm, x) is not None
        torch.testing.assert_close(module(x), unfolded(module, x), rtol=1e-5, atol=1e-5)
        module.train()
        assert conv_norm_folded(module.conv, module.norm, x) is None
        before = module.norm.running_mean.clone()
        module(x)
        assert not torch.equal(before, module.norm.running_mean)  # batch statistics still update


@pytest.mark.parametrize("norm", ["gn", "none"])
def test_other_norms_are_not_folded(norm):
    module = ConvNormAct(8, 16, norm=norm).eval()
    with torch.no_grad():
        assert conv_norm_folded(module.conv, module.norm, torch.randn(1, 8, 8, 8)) is None


def test_state_dict_is_unchanged_by_folding():
    module = block()
    keys = list(module.state_dict())
    with torch.no_grad():
        module(torch.randn(1, 8, 8, 8))
    assert list(module.state_dict()) == keys
    assert all(not name.startswith("_") for name in keys)


def test_cache_follows_weight_updates():
    """An in-place write, a state dict load, a replaced tensor and a dtype change all fold again."""
    module = block()
    x = torch.randn(1, 8, 12, 12)
    with torch.no_grad():
        module(x)
        module.conv.weight.mul_(-2)  # in place (optimizer steps, copy_)
        torch.testing.assert_close(module(x), unfolded(module, x), rtol=1e-5, atol=1e-5)
        module.load_state_dict(block(seed=1).state_dict())
        torch.testing.assert_close(module(x), unfolded(module, x), rtol=1e-5, atol=1e-5)
        module.norm.running_var = module.norm.running_var * 4  # a new tensor object
        torch.testing.assert_close(module(x), unfolded(module, x), rtol=1e-5, atol=1e-5)
        module.double()
        out = module(x.double())
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, unfolded(module, x.double()))


def test_trainable_layers_keep_exact_gradients():
    """A gradient for the conv's weight: not folded, same gradients as the two ops."""
    module = block(act=None)
    x = torch.randn(2, 8, 10, 10)
    assert conv_norm_folded(module.conv, module.norm, x) is None
    module(x).square().sum().backward()
    reference = copy.deepcopy(module)
    reference.zero_grad()
    reference.norm(reference.conv(x)).square().sum().backward()
    assert torch.equal(module.conv.weight.grad, reference.conv.weight.grad)


def test_frozen_layers_fold_and_pass_gradients_to_the_input():
    """Frozen conv + frozen BN in training (a frozen ResNet stage): folded, input gradient kept."""
    module = block()
    module.conv.weight.requires_grad_(False)
    x = torch.randn(2, 8, 10, 10, requires_grad=True)
    assert conv_norm_folded(module.conv, module.norm, x) is not None
    (grad,) = torch.autograd.grad(module(x).sum(), x)
    x_ref = x.detach().requires_grad_()
    (want,) = torch.autograd.grad(unfolded(module, x_ref).sum(), x_ref)
    torch.testing.assert_close(grad, want, rtol=1e-5, atol=1e-5)


def test_folds_made_in_inference_mode_work_with_autograd_later():
    module = block()
    module.conv.weight.requires_grad_(False)
    x = torch.randn(1, 8, 9, 9)
    with torch.inference_mode():
        module(x)
    y = module(x.requires_grad_())  # the cached fold is a normal tensor: usable in autograd
    y.sum().backward()
    assert x.grad is not None


# torch.jit.trace on purpose (what the CPU fast paths do under tracing): torch deprecates jit tracing, and
# the tracer warns about the Python values it records as constants
@pytest.mark.filterwarnings("ignore:`torch.jit.trace.*` is deprecated:FutureWarning", "ignore::torch.jit.TracerWarning")
def test_tracing_records_the_plain_ops():
    module = block()
    x = torch.randn(1, 8, 9, 9)
    traced = torch.jit.trace(module, x)
    kinds = {node.kind() for node in traced.inlined_graph.nodes()}
    assert any("batch_norm" in k or "mul" in k for k in kinds), kinds  # the norm is still there
    with torch.no_grad():
        torch.testing.assert_close(traced(x), module(x), rtol=1e-5, atol=1e-5)


def test_frozen_batchnorm_of_torchvision_folds_too():
    module = block()
    frozen = FrozenBatchNorm2d(16)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(frozen, name).copy_(getattr(module.norm, name))
    module.norm = frozen
    x = torch.randn(1, 8, 9, 9)
    with torch.no_grad():
        assert conv_norm_folded(module.conv, module.norm, x) is not None
        torch.testing.assert_close(module(x), unfolded(module, x), rtol=1e-5, atol=1e-5)


def test_fold_bn_false_runs_conv_then_norm_bit_for_bit():
    x = torch.randn(2, 8, 23, 37)
    folding, plain = block(), block(fold_bn=False)
    plain.load_state_dict(folding.state_dict())
    with torch.no_grad():
        want = plain.act(plain.norm(plain.conv(x)))
        assert torch.equal(plain(x), want)
        assert not torch.equal(folding(x), want)  # the folded weights round differently
        torch.testing.assert_close(folding(x), want, rtol=1e-5, atol=1e-5)
        configure_kernels(folding, fold_bn=False)
        assert folding.fold_bn is False and torch.equal(folding(x), want)
        configure_kernels(folding)
        assert folding.fold_bn is True and not torch.equal(folding(x), want)
