"""Known answers for the Row LSTM network (van den Oord et al. 2016, arXiv:1601.06759): the autoregressive
property by autograd Jacobian, information carried down the rows by the recurrence, conditioning, shapes."""
from __future__ import annotations

import pytest
import torch

from dgm.nn.pixelrnn import RowLSTMNetwork

PARAMS = 2  # parameters per data channel in the tests' outputs


def network(channels: int, *, seed: int = 0, **options) -> RowLSTMNetwork:
    """A float64 network whose weights are all shifted off their init, so that no connection the
    masks allow is zero by accident (a zero weight would hide a leak as well as a path)."""
    torch.manual_seed(seed)
    options = {"width": 8 * channels, "layers": 2} | options
    net = RowLSTMNetwork(channels, PARAMS * channels, **options).double()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return net


def before(i: int, j: int, c: int, i2: int, j2: int, c2: int) -> bool:
    """Whether input (c2, i2, j2) comes before output (c, i, j) in raster-then-channel order."""
    return (i2, j2) < (i, j) or ((i2, j2) == (i, j) and c2 < c)


@pytest.mark.parametrize("channels", [1, 3])
def test_autoregressive(channels: int) -> None:
    H, W = 4, 5
    net = network(channels)
    # a few images at once, summed over the batch: images don't interact, so this is each image's
    # Jacobian; a path counts as open if it is open for one of them (a ReLU may be off for another)
    x = torch.randn(4, channels, H, W, dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lambda x: net(x).sum(0), x)  # (C * P, H, W, B, C, H, W)
    J = J.view(channels, PARAMS, H, W, -1, channels, H, W).abs().amax((1, 4))  # (C, H, W, C, H, W)
    allowed = torch.tensor([[[[[[before(i, j, c, i2, j2, c2) for j2 in range(W)] for i2 in range(H)]
                               for c2 in range(channels)] for j in range(W)] for i in range(H)] for c in range(channels)])
    assert J[~allowed].eq(0).all(), "an output depends on its own or a later input"
    for c in range(channels):
        for i in range(H):
            for j in range(W):
                if i > 0:
                    assert J[c, i, j, :, i - 1, j].ne(0).all(), f"({c}, {i}, {j}) misses the pixel above"
                if j > 0:
                    assert J[c, i, j, :, i, j - 1].ne(0).all(), f"({c}, {i}, {j}) misses the pixel to the left"
                assert J[c, i, j, :c, i, j].ne(0).all(), f"({c}, {i}, {j}) misses earlier channels of its pixel"


@pytest.mark.parametrize("layers", [1, 2])
def test_recurrence_carries_the_first_row_down(layers: int) -> None:
    """The 7x7 first layer reaches 3 rows up and each 1x3 kernel one row; the last of 12 rows sees row 0
    only through the state carried down the rows, c_i = f_i c_{i-1} + ... (eq. 3)."""
    H, W = 12, 3
    net = network(1, layers=layers)
    x = torch.randn(4, 1, H, W, dtype=torch.float64, requires_grad=True)  # 4 images, in case a ReLU is off for one
    net(x)[:, :, H - 1, 1].sum().backward()
    assert x.grad[:, 0, 0].abs().amax(0).min() > 0
    assert x.grad[:, 0, H - 1, 1:].eq(0).all()  # its own pixel and the one after it stay hidden


def test_conditioning_changes_the_output() -> None:
    net = network(3, condition_dim=4)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    h = torch.eye(4, dtype=torch.float64)[:2]
    out = net(x, h)
    assert not torch.allclose(out, net(x, h.flip(0)))
    assert torch.allclose(out, net(x, h))
    with pytest.raises(ValueError, match="conditional"):
        net(x)
    with pytest.raises(ValueError, match="unconditional"):
        network(3)(x, h)
    with pytest.raises(ValueError, match=r"h must be"):
        net(x, h[:, :3])


@pytest.mark.parametrize("size", [(1, 1), (28, 28), (3, 7)])
def test_shapes(size: tuple[int, int]) -> None:
    net = RowLSTMNetwork(3, 3 * 4, width=12, layers=2)
    assert net(torch.rand(2, 3, *size) * 2 - 1).shape == (2, 12, *size)


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="out_channels"):
        RowLSTMNetwork(3, 10)
    with pytest.raises(ValueError, match="width"):
        RowLSTMNetwork(3, 6, width=64)
    with pytest.raises(ValueError, match="x must be"):
        RowLSTMNetwork(1, 1, width=4)(torch.zeros(1, 3, 4, 4))


def test_bf16_autocast() -> None:
    net = RowLSTMNetwork(3, 6, width=12, layers=2, condition_dim=2)
    x, h = torch.rand(2, 3, 6, 5) * 2 - 1, torch.randn(2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, h)
    assert out.shape == (2, 6, 6, 5) and out.isfinite().all()
