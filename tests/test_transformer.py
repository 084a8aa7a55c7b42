"""Known-answer tests of the causal transformer and the image transformer network (dgm.nn.transformer):
causality by autograd Jacobians, and cached (one position or a few at a time) equals one full pass."""
from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from dgm.nn.transformer import CausalTransformer, ImageTransformerNetwork, KVCache


def transformer(dtype: torch.dtype = torch.float64, max_length: int = 10, **options) -> CausalTransformer:
    torch.manual_seed(0)
    return CausalTransformer(16, 2, 4, max_length, **options).to(dtype).eval()


def image_network(shape: tuple[int, int, int], dtype: torch.dtype = torch.float64,
                  **options) -> ImageTransformerNetwork:
    torch.manual_seed(0)
    return ImageTransformerNetwork(shape, 5, width=16, depth=2, heads=2, **options).to(dtype).eval()


def subpixel_order(x: torch.Tensor) -> torch.Tensor:
    """``(..., C, H, W)`` to ``(..., D)``: raster order, channel innermost."""
    return x.movedim(-3, -1).flatten(-3)


# --- CausalTransformer -----------------------------------------------------------------------------
def test_causal_by_autograd():
    net, L = transformer(), 7
    h = torch.randn(L, 16, dtype=torch.float64)
    J = jacobian(lambda h: net(h[None])[0], h)  # (L, width, L, width): output t by input s
    depends = J.abs().sum(dim=(1, 3)) > 0  # (L, L)
    assert torch.equal(depends, torch.ones(L, L, dtype=torch.bool).tril())


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("chunks", [[1] * 10, [3, 3, 3, 1], [4, 1, 5]])
def test_cached_equals_full_pass(dtype, atol, chunks):
    net = transformer(dtype)
    h = torch.randn(2, 10, 16, dtype=dtype)
    with torch.inference_mode():
        full = net(h)
        cache = net.new_cache(2)
        steps = []
        for n in chunks:
            start = cache.length
            steps.append(net(h[:, start:start + n], cache=cache))
            assert cache.length == start + n
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=atol, rtol=0)


def test_cache_is_preallocated():
    net = transformer()
    cache = net.new_cache(3)
    assert isinstance(cache, KVCache) and cache.length == 0 and len(cache.keys) == net.depth
    assert cache.keys[0].shape == (3, 4, 10, 4) and cache.keys[0].dtype == torch.float64
    before = cache.keys[0].data_ptr()
    with torch.inference_mode():
        net(torch.randn(3, 4, 16, dtype=torch.float64), cache=cache)
    assert cache.keys[0].data_ptr() == before  # written in place, not reallocated


def test_too_long_raises():
    net = transformer(max_length=8)
    with pytest.raises(ValueError, match="max_length >= 9"):
        net(torch.randn(1, 9, 16, dtype=torch.float64))
    with torch.inference_mode():
        cache = net.new_cache(1)
        net(torch.randn(1, 6, 16, dtype=torch.float64), cache=cache)
        with pytest.raises(ValueError, match="max_length"):
            net(torch.randn(1, 3, 16, dtype=torch.float64), cache=cache)
        with pytest.raises(ValueError, match="new_cache"):
            net(torch.randn(2, 1, 16, dtype=torch.float64), cache=cache)


def test_dropout_only_in_training():
    net = transformer(dropout=0.5)
    h = torch.randn(2, 6, 16, dtype=torch.float64)
    assert torch.equal(net(h), net(h))
    net.train()
    assert not torch.allclose(net(h), net(h))


# --- ImageTransformerNetwork -----------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
def test_image_network_is_autoregressive(channels):
    shape = (channels, 3, 3)
    net, D = image_network(shape), channels * 9
    x = torch.rand(*shape, dtype=torch.float64) * 2 - 1

    def params(v: torch.Tensor) -> torch.Tensor:  # (D,) subpixel values -> (D, P) their parameters
        image = v.view(3, 3, channels).permute(2, 0, 1)[None]  # (1, C, H, W)
        out = net(image).view(channels, 5, 3, 3)  # data channel c's P parameters in block c
        return subpixel_order(out.transpose(0, 1)).T  # (D, P)

    J = jacobian(params, subpixel_order(x))  # (D, P, D)
    depends = J.abs().sum(dim=1) > 0  # (D, D): subpixel s's parameters by input subpixel t
    assert torch.equal(depends, torch.ones(D, D, dtype=torch.bool).tril(-1))


@pytest.mark.parametrize("channels", [1, 3])
def test_begin_extend_reproduce_forward(channels):
    net = image_network((channels, 3, 4), condition_dim=2)
    x = torch.rand(2, channels, 3, 4, dtype=torch.float64) * 2.4 - 1.2  # noisy: some outside [-1, 1]
    h = torch.randn(2, 2, dtype=torch.float64)
    with torch.inference_mode():
        full = net(x, h).view(2, channels, 5, 3, 4).transpose(1, 2)  # (B, P, C, H, W)
        values = subpixel_order(x)  # (B, D)
        p, cache = net.begin(h, batch=2)
        steps = [p]
        for s in range(net.sequence_length - 1):
            steps.append(net.extend(values[:, s], cache))
        with pytest.raises(ValueError, match="all .* subpixels have been predicted"):
            net.extend(values[:, -1], cache)
    assert net.sequence_length == channels * 12 and cache.length == net.sequence_length
    assert torch.allclose(torch.stack(steps, dim=-1), subpixel_order(full), atol=1e-10, rtol=0)


def test_conditioning_changes_the_start_token():
    net = image_network((1, 2, 2), condition_dim=3)
    h = torch.randn(2, 3, dtype=torch.float64)
    with torch.inference_mode():
        p, _ = net.begin(h, batch=2)
    assert not torch.allclose(p[0], p[1])
    with pytest.raises(ValueError, match="condition_dim=3"):
        net(torch.zeros(1, 1, 2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="condition_dim=0"):
        image_network((1, 2, 2))(torch.zeros(1, 1, 2, 2, dtype=torch.float64), h[:1])


def test_image_network_shapes_and_errors():
    net = image_network((3, 2, 2), torch.float32)
    assert net(torch.zeros(4, 3, 2, 2)).shape == (4, 15, 2, 2)
    with pytest.raises(ValueError, match=r"shape=\(1, 2, 2\)"):
        net(torch.zeros(4, 1, 2, 2))
    with pytest.raises(ValueError, match="begin"):
        net.extend(torch.zeros(4), net.transformer.new_cache(4))
