"""The captioned ``scenes``: exact re-rendering, captions that parse back to their factors, held-out
compositions, and geometry (objects apart and inside the frame, true colours, known areas)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from dgm import data
from dgm.data import scenes
from dgm.data.captions import caption_ids, caption_vocabulary
from dgm.data.sources import Request
from dgm.errors import DgmError

SHAPE, COLOUR, SIZE = scenes.SHAPES.index, scenes.COLOURS.index, scenes.SIZES.index


def scene(*, count=0, a=("circle", "red", "large"), b=("circle", "red", "small"), relation=0, shift=(2, 2)):
    """One factor row from names: objects as (shape, colour, size), shifts as indices (2: none)."""
    def thing(t):
        return [SHAPE(t[0]), COLOUR(t[1]), SIZE(t[2])]

    return [count, *thing(a), *thing(b), relation, *shift]


@pytest.mark.parametrize("split", ["train", "test"])
def test_each_split_is_rendered_again_exactly_from_its_factors(split):
    part = scenes.load(Request(split))
    n = scenes.SPLIT_SIZES[split]
    assert part.x.shape == (n, 3, 32, 32) and part.x.dtype == np.uint8
    assert part.factors.shape == (n, 10) and part.captions.shape == (n, 10)
    assert ((part.factors >= 0) & (part.factors < scenes.FACTOR_SIZES)).all()
    rows = np.random.default_rng(0).choice(n, 300, replace=False)
    assert np.array_equal(scenes.render(part.factors[rows]), part.x[rows])
    assert np.array_equal(scenes.render(part.factors[rows]), scenes.render(part.factors[rows]))  # deterministic
    assert np.array_equal(part.y, part.factors[:, 1])  # labels: object A's shape
    assert 0.45 < part.factors[:, 0].mean() < 0.55  # about half the scenes hold two objects
    one = part.factors[part.factors[:, 0] == 0]
    assert (one[:, scenes.B_FACTORS] == 0).all()  # one object: B and the relation canonical
    assert scenes.caption_word_ids(part.factors[rows]).tolist() == part.captions[rows].tolist()


def test_no_training_scene_is_held_out_and_the_test_split_has_both():
    train, test = (scenes.load(Request(s)).factors for s in ("train", "test"))
    assert not scenes.is_heldout(train).any()
    assert 0.08 < scenes.is_heldout(test).mean() < 0.17
    # held out means a green triangle as either object; a green triangle B of a one-object scene is no object
    heldout = [scene(a=("triangle", "green", "small")),
               scene(count=1, b=("triangle", "green", "large"))]
    seen = [scene(a=("triangle", "blue", "small"), b=("circle", "green", "small"), count=1),
            scene(b=("triangle", "green", "large"))]
    assert scenes.is_heldout(np.array(heldout + seen)).tolist() == [True, True, False, False]
    assert all("green triangle" in c for c in scenes.caption(np.array(heldout)))


def test_caption_parses_back_to_the_factors_it_specifies():
    test = scenes.load(Request("test")).factors
    texts = scenes.caption(test)
    parsed = scenes.caption_factors(texts)
    assert scenes.caption(parsed) == texts
    given = scenes.specified(test)
    assert np.array_equal(parsed[given], test[given])
    assert (parsed[:, 8:] == scenes.CANONICAL_SHIFT).all() and not given[:, 8:].any()
    assert given[:, :4].all() and np.array_equal(given[:, 4], test[:, 0] == 1)
    assert scenes.caption(np.array([scene(), scene(count=1, relation=1, a=("square", "yellow", "small"),
                                               b=("triangle", "blue", "large"))])) == [
        "a large red circle", "a small yellow square above a large blue triangle"]
    assert max(len(t.split()) for t in texts) == scenes.CAPTION_LENGTH
    assert scenes.caption_factors(["A Small  red circle, left of a LARGE blue square."])[0].tolist() == \
        scene(count=1, a=("circle", "red", "small"), b=("square", "blue", "large"))


@pytest.mark.parametrize("text", ["a purple circle", "a small red circle below a large blue square",
                                  "a small red circle left of", "small red circle", "a small red circle above a "
                                  "large blue square above a small red circle", ""])
def test_text_outside_the_grammar_is_refused(text):
    with pytest.raises(DgmError, match="is not a scene caption: write 'a SIZE COLOUR SHAPE'"):
        scenes.caption_factors([text])


def test_bad_factors_are_refused():
    with pytest.raises(DgmError, match="indices below"):
        scenes.render(np.array([[0, 3, 0, 0, 0, 0, 0, 0, 0, 0]]))
    with pytest.raises(DgmError, match=r"array \(N, 10\)"):
        scenes.caption(np.zeros((2, 9), np.int64))


def every_layout():
    """A red A and a green B in every arrangement of shapes, sizes, relation and shift, and every single A."""
    rows = []
    for sa, za, sb, zb, rel, sx, sy in itertools.product(range(3), range(2), range(3), range(2), range(2),
                                                         range(5), range(5)):
        rows.append([1, sa, COLOUR("red"), za, sb, COLOUR("green"), zb, rel, sx, sy])
    for sa, za, sx, sy in itertools.product(range(3), range(2), range(5), range(5)):
        rows.append([0, sa, COLOUR("red"), za, 0, 0, 0, 0, sx, sy])
    return np.array(rows)


def test_objects_never_touch_and_stay_inside_the_frame():
    factors = every_layout()
    x = scenes.render(factors).astype(int)
    a, b = x[:, 0] > 0, x[:, 1] > 0  # red is object A's coverage, green object B's
    assert a.any(axis=(1, 2)).all()
    assert np.array_equal(b.any(axis=(1, 2)), factors[:, 0] == 1)
    # not even 8-neighbours: dilate A by one pixel and it still misses B
    grown = np.pad(a, ((0, 0), (1, 1), (1, 1)))
    grown = np.stack([grown[:, 1 + i:33 + i, 1 + j:33 + j] for i in (-1, 0, 1) for j in (-1, 0, 1)]).any(axis=0)
    assert not (grown & b).any()
    lit = a | b
    assert not (lit[:, 0].any() or lit[:, -1].any() or lit[:, :, 0].any() or lit[:, :, -1].any())
    # A is the left one for "left of" and the upper one for "above"
    two = factors[:, 0] == 1
    cols, rows = np.arange(32)[None, None, :], np.arange(32)[None, :, None]
    centre = {k: ((m * cols).sum((1, 2)) / m.sum((1, 2)), (m * rows).sum((1, 2)) / m.sum((1, 2)))
              for k, m in (("a", a[two]), ("b", b[two]))}
    left = factors[two, 7] == 0
    assert (centre["a"][0][left] < centre["b"][0][left] - 10).all()
    assert (centre["a"][1][~left] < centre["b"][1][~left] - 10).all()


def test_each_colour_keeps_its_hue():
    rows = [scene(a=("square", colour, "large")) for colour in scenes.COLOURS]
    x = scenes.render(np.array(rows)).astype(int)  # (4, 3, H, W)
    for image, rgb in zip(x, scenes.COLOUR_RGB.astype(int)):
        lit = image.max(axis=0) > 0
        assert (image[:, 16, 16] == rgb).all()  # fully covered: exactly the colour
        # partly covered edges: the colour scaled, so off channels stay 0 and on channels equal
        assert (image[rgb == 0][:, lit] == 0).all()
        on = image[rgb > 0][:, lit]
        assert (on == on[:1]).all()


def test_areas_and_shifts_are_as_documented():
    rows = [scene(a=(shape, "red", size)) for shape in scenes.SHAPES for size in scenes.SIZES]
    area = scenes.render(np.array(rows))[:, 0].astype(float).sum(axis=(1, 2)) / 255
    r = np.array(scenes.HALF_WIDTHS * 3)
    h = scenes.SQUARE_SIDE * r[2:4]
    exact = np.concatenate([np.pi * r[:2] ** 2, (2 * h) ** 2, 2 * r[4:] ** 2])
    perimeter = np.concatenate([2 * np.pi * r[:2], 8 * h, (2 + 2 * np.sqrt(5)) * r[4:]])
    # 4x4 sub-pixel centres see each edge at most half a sub-pixel (1/8 pixel) from where it is
    assert (np.abs(area - exact) <= perimeter / 8).all()
    assert (area[1::2] > 2.5 * area[::2]).all()  # large is clearly larger
    # moving the scene one index right (down) moves every pixel one pixel right (down)
    base = scene(count=1, a=("triangle", "blue", "large"), b=("circle", "yellow", "small"), shift=(1, 3))
    right, down = list(base), list(base)
    right[8], down[9] = 2, 4
    x = scenes.render(np.array([base, right, down]))
    assert np.array_equal(np.roll(x[0], 1, axis=2), x[1]) and np.array_equal(np.roll(x[0], 1, axis=1), x[2])


def test_scenes_batches_carry_their_captions_everywhere():
    train = data.load("scenes")
    spec = train.spec
    assert spec.shape == (3, 32, 32) and spec.class_names == scenes.SHAPES
    assert spec.extras["heldout"] == "green triangle" and spec.extras["caption_length"] == 10
    assert spec.extras["factors"] == scenes.FACTORS and spec.extras["caption_words"] == scenes.CAPTION_WORDS
    assert train.captions.shape == (20_000, 10) and train.captions.dtype == torch.int64
    vocab = caption_vocabulary(spec)
    assert vocab.decode(train.captions[:50]) == scenes.caption(train.factors[:50].numpy())
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:64]
    batch = next(train.batches(64, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(batch.captions, train.captions[order]) and torch.equal(caption_ids(batch, spec), batch.captions)
    assert torch.equal(train.subset(7).captions, train.captions[:7])
    assert torch.equal(train.to("cpu").with_representation("signed").tensors(5).captions, train.captions[:5])
    part = train.with_labelled(30, seed=0)
    assert torch.equal(part.captions, train.captions)
    assert torch.equal(part.known_labels().captions, train.captions[part.labelled])
    # rendering again from factors gives the captions too
    again = data.render(spec, train.factors[:40])
    assert torch.equal(again.raw, train.raw[:40]) and torch.equal(again.captions, train.captions[:40])
    assert data.render(data.load("sprites").spec, data.load("sprites").factors[:3]).captions is None
