"""Known answers for the PixelCNN and Gated PixelCNN networks (dgm.nn.pixelcnn): the autoregressive
order (pixel raster, then colour) checked by autograd on every output, the gated network's receptive
field without a blind spot against PixelCNN's, conditioning, and shapes."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from dgm.nn.pixelcnn import GatedPixelCNNNetwork, PixelCNNNetwork

H, W = 5, 6  # non-square, small enough for a full Jacobian
PARAMS_PER_CHANNEL = 2


@pytest.fixture(autouse=True)
def seeded() -> None:
    torch.manual_seed(0)  # the inputs and h drawn in the tests (the weights come from perturbed's seed)


def perturbed(net: nn.Module, seed: int = 0) -> nn.Module:
    """``net`` in float64 with small random weights and biases near 1, drawn from ``seed``: no
    parameter is zero, and every ReLU is alive (a colour block of two features behind dead ReLUs
    would cut real paths), so that a zero gradient can only come from a mask."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.double().named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            p.copy_(1 + 0.1 * noise if name.endswith("bias") else 0.02 * noise)
    return net.eval()


def dependencies(net: nn.Module, channels: int, h: Tensor | None = None) -> Tensor:
    """``|d out / d x|`` as a ``(C*H*W, C*H*W)`` matrix, rows the outputs (c, i, j) (the sum of data
    channel c's block of parameters), columns the inputs (c', i', j'), both flattened channel-major."""
    x = torch.rand(1, channels, H, W, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1

    def blocks(x: Tensor) -> Tensor:
        out = net(x, h)  # (1, C * P, H, W)
        return out.view(channels, -1, H, W).sum(1).flatten()  # (C * H * W,)

    return torch.autograd.functional.jacobian(blocks, x, vectorize=True).reshape(channels * H * W, -1).abs()


def allowed(channels: int) -> Tensor:
    """``(C*H*W, C*H*W)`` booleans: input (c', i', j') comes before output (c, i, j) in the order
    pixel raster, then channel."""
    c, i, j = torch.meshgrid(torch.arange(channels), torch.arange(H), torch.arange(W), indexing="ij")
    position = ((i * W + j) * channels + c).flatten()  # rank of each (c, i, j) in the generation order
    return position[None, :] < position[:, None]


def pixelcnn(channels: int, *, layers: int = 2, condition_dim: int = 0) -> nn.Module:
    return perturbed(PixelCNNNetwork(channels, PARAMS_PER_CHANNEL * channels, width=6, layers=layers,
                                     condition_dim=condition_dim))


def gated(channels: int, *, layers: int = 3, condition_dim: int = 0) -> nn.Module:
    # 3 layers of k = 5 reach 6 columns to the right and 7 rows up: the whole 5x6 image
    return perturbed(GatedPixelCNNNetwork(channels, PARAMS_PER_CHANNEL * channels, width=6, layers=layers,
                                          kernel_size=5, condition_dim=condition_dim))


NETWORKS = {"pixelcnn": pixelcnn, "gated": gated}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", NETWORKS)
def test_outputs_depend_only_on_earlier_inputs(name, channels):
    jac = dependencies(NETWORKS[name](channels), channels)
    forbidden = ~allowed(channels)
    assert jac[forbidden].max() == 0  # exactly: masks, padding and the shift, not small weights
    assert jac[~forbidden].gt(0).any()


@pytest.mark.parametrize("channels", [1, 3])
def test_conditioning_keeps_the_order(channels):
    h = torch.randn(1, 4, dtype=torch.float64)
    for make in NETWORKS.values():
        jac = dependencies(make(channels, condition_dim=4), channels, h)
        assert jac[~allowed(channels)].max() == 0


@pytest.mark.parametrize("channels", [1, 3])
def test_gated_network_has_no_blind_spot_and_pixelcnn_has(channels):
    # every earlier input reaches every output through the gated stacks ...
    gated_jac = dependencies(gated(channels), channels)
    assert gated_jac[allowed(channels)].min() > 0
    # ... while PixelCNN, as deep, misses pixels up and to the right (its blind spot): the output of
    # (1, 0) does not see (0, 4) or (0, 5), which 7x7 then 3x3 masked kernels cannot reach
    pixel_jac = dependencies(pixelcnn(channels, layers=3), channels)
    assert pixel_jac[allowed(channels)].min() == 0
    pixel_jac = pixel_jac.view(channels, H, W, channels, H, W)  # (c, i, j, c', i', j')
    assert pixel_jac[:, 1, 0, :, 0, 4:].max() == 0
    assert pixel_jac[:, 1, 0, :, 0, :4].min() > 0  # the test sees gradients where there is no spot


def test_the_first_colour_sees_no_part_of_its_own_pixel():
    # the channel-block masks of the first layers, read off the Jacobian's diagonal blocks (R sees
    # nothing of its pixel, G sees R, B sees R and G)
    for make in NETWORKS.values():
        jac = dependencies(make(3), 3).view(3, H, W, 3, H, W)
        own = jac[:, 2, 3, :, 2, 3]  # (c, c') at one pixel
        assert torch.equal(own > 0, torch.tensor([[0, 0, 0], [1, 0, 0], [1, 1, 0]], dtype=torch.bool))


@pytest.mark.parametrize("name", NETWORKS)
def test_condition(name):
    net = NETWORKS[name](3, condition_dim=4)
    x = torch.rand(2, 3, H, W, dtype=torch.float64)
    h = torch.randn(2, 4, dtype=torch.float64)
    # every output of every example depends on its own h, and on no other example's
    jac = torch.autograd.functional.jacobian(lambda h: net(x, h), h)  # (2, 6, H, W, 2, 4)
    per_example = jac.abs().sum(-1).movedim(-1, 1).flatten(2)  # (2, 2, 6 H W): output example, h example
    assert per_example[0, 0].min() > 0 and per_example[1, 1].min() > 0
    assert per_example[0, 1].max() == 0 and per_example[1, 0].max() == 0
    with pytest.raises(ValueError, match="conditional"):
        net(x)
    with pytest.raises(ValueError, match=r"shape \(B, condition_dim\)"):
        net(x, h[:, :3])
    with pytest.raises(ValueError, match="unconditional"):
        NETWORKS[name](3)(x, h)


@pytest.mark.parametrize("name", NETWORKS)
def test_gradients_reach_every_parameter(name):
    # the conditioning projections of every block included
    net = NETWORKS[name](3, condition_dim=4)
    net(torch.rand(2, 3, H, W, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)).sum().backward()
    unused = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert not unused


@pytest.mark.parametrize("cls", [PixelCNNNetwork, GatedPixelCNNNetwork])
def test_sizes_are_checked(cls):
    with pytest.raises(ValueError, match="multiple of channels"):
        cls(3, 7)
    with pytest.raises(ValueError, match="multiple of channels"):
        cls(3, 6, width=64)


@pytest.mark.parametrize("size", [(1, 1), (28, 28), (3, 7)])
@pytest.mark.parametrize("cls", [PixelCNNNetwork, GatedPixelCNNNetwork])
def test_shapes(cls, size):
    net = cls(3, 3 * 10, width=66, layers=2)
    with torch.no_grad():
        out = net(torch.rand(2, 3, *size) * 2 - 1)
    assert out.shape == (2, 30, *size)
    assert out.isfinite().all()


@pytest.mark.parametrize("cls", [PixelCNNNetwork, GatedPixelCNNNetwork])
def test_bf16_autocast(cls):
    net = cls(1, 4, width=16, layers=2, condition_dim=3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.rand(2, 1, 8, 8) * 2 - 1, torch.randn(2, 3))
    assert out.shape == (2, 4, 8, 8)
    assert out.float().isfinite().all()

