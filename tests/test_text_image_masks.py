"""DALL-E's attention masks (Ramesh et al. 2021, sec. 2.2, fig. 11) and the masked transformer with its cache."""
from __future__ import annotations

import pytest
import torch

from dgm.nn.transformer import CausalTransformer, text_image_masks

T, GRID = 3, (3, 4)  # 3 caption tokens, a 3x4 grid of image tokens
N = GRID[0] * GRID[1]


def image_pattern(kind: str, k: int, j: int, w: int = GRID[1], kernel: int = 3) -> bool:
    """Whether image token k sees image token j, written out case by case."""
    if j > k:
        return False
    if kind == "row":
        return k - j <= w
    if kind == "column":
        return (k - j) % w == 0
    return abs(k // w - j // w) <= kernel // 2 and abs(k % w - j % w) <= kernel // 2


def test_masks_follow_the_paper_position_by_position():
    depth = 6
    masks = text_image_masks(T, GRID, depth, kernel=3)
    L = 1 + T + N - 1
    assert masks.shape == (depth, L, L)
    kinds = ["row", "row", "column", "row", "row", "conv"]  # column when (l - 2) mod 4 == 0, conv last
    for layer, kind in enumerate(kinds):
        for q in range(L):
            for s in range(L):
                if q <= T:  # the start and the caption tokens: causal, never an image token
                    expected = s <= q
                elif s <= T:  # an image query sees the whole caption
                    expected = True
                else:
                    expected = image_pattern(kind, q - T - 1, s - T - 1)
                assert masks[layer, q, s].item() == expected, (layer, kind, q, s)


def test_caption_never_sees_the_image_and_the_image_is_causal():
    masks = text_image_masks(T, GRID, 4)
    assert not masks[:, :1 + T, 1 + T:].any()
    assert not masks.triu(1).any()
    assert masks.diagonal(dim1=1, dim2=2).all()


def test_a_row_and_a_column_block_reach_every_earlier_image_token():
    masks = text_image_masks(T, GRID, 4).float()
    two_hops = (masks[2] @ masks[1]) > 0  # a row block, then a column block
    assert torch.equal(two_hops, torch.ones_like(two_hops).tril())


def test_one_masked_block_depends_exactly_on_its_allowed_keys():
    """Autograd: output q of a one-block transformer has a non-zero derivative in input s exactly where
    the mask allows q to see s."""
    torch.manual_seed(0)
    masks = text_image_masks(T, GRID, 1, kernel=3)
    L = masks.shape[-1]
    net = CausalTransformer(8, 1, 2, max_length=L, masks=masks).double()
    h = torch.randn(1, L, 8, dtype=torch.double)
    readout = torch.randn(8, dtype=torch.double)  # not a sum: a LayerNorm's outputs sum to a constant
    jac = torch.autograd.functional.jacobian(lambda x: net(x) @ readout, h)[0, :, 0]  # (L, L, 8)
    depends = jac.abs().sum(-1) > 1e-12
    assert torch.equal(depends, masks[0])


def test_masked_cache_steps_equal_the_full_pass():
    torch.manual_seed(1)
    masks = text_image_masks(T, GRID, 4)
    L = masks.shape[-1]
    net = CausalTransformer(8, 4, 2, max_length=L, masks=masks).eval()
    h = torch.randn(2, L, 8)
    full = net(h)
    with torch.inference_mode():
        cache = net.new_cache(2)
        steps = [net(h[:, :1 + T], cache=cache)] + [net(h[:, t:t + 1], cache=cache) for t in range(1 + T, L)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)


def test_masks_outside_the_causal_triangle_are_refused():
    bad = torch.ones(1, 5, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="causal triangle"):
        CausalTransformer(8, 1, 2, max_length=5, masks=bad)
    with pytest.raises(ValueError, match="one"):
        CausalTransformer(8, 2, 2, max_length=5, masks=torch.ones(1, 5, 5, dtype=torch.bool).tril())
