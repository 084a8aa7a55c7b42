"""Data beyond labelled images: partial labels, known generative factors, token sequences, point sets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dgm import data
from dgm.data.core import UNLABELLED
from dgm.data.labels import per_class
from dgm.errors import DgmError
from dgm.run import DataConfig, RunConfig, load_data


# --- partial labels ---------------------------------------------------------------------------------
def test_labelled_subset_is_class_balanced_and_hides_the_other_labels():
    full = data.load("digits")
    part = full.with_labelled(100, seed=0)
    assert part.labelled is not None and part.labelled.dtype == torch.bool
    assert int(part.labelled.sum()) == 100
    kept = part.labels[part.labelled]
    assert torch.bincount(kept, minlength=10).tolist() == [10] * 10
    assert torch.equal(kept, full.labels[part.labelled])  # the kept labels are the true ones
    assert (part.labels[~part.labelled] == UNLABELLED).all()
    assert torch.equal(part.raw, full.raw)  # every example stays, only labels are hidden


def test_remainder_goes_to_the_first_classes():
    assert per_class(25, 10) == [3] * 5 + [2] * 5
    part = data.load("digits").with_labelled(25, seed=3)
    assert torch.bincount(part.labels[part.labelled], minlength=10).tolist() == [3] * 5 + [2] * 5


def test_labelled_subset_follows_the_seed():
    ds = data.load("digits")
    a, b, c = (ds.with_labelled(50, seed) for seed in (7, 7, 8))
    assert torch.equal(a.labelled, b.labelled)
    assert not torch.equal(a.labelled, c.labelled)


def test_labelled_mask_travels_with_batches_subsets_and_representations():
    part = data.load("digits").with_labelled(30, seed=0).with_representation("binary-dynamic").subset(500)
    assert len(part.labelled) == 500
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(500, generator=torch.Generator().manual_seed(0))
    seen = 0
    for i, batch in enumerate(part.batches(64, shuffle=True, generator=g)):
        index = order[i * 64:(i + 1) * 64]
        assert torch.equal(batch.labelled, part.labelled[index])
        assert torch.equal(batch.y == UNLABELLED, ~batch.labelled)
        seen += int(batch.labelled.sum())
    assert seen == int(part.labelled.sum())
    whole = part.tensors()
    assert torch.equal(whole.labelled, part.labelled) and whole.mask is None
    assert data.load("digits").tensors(8).labelled is None  # fully labelled: no mask


def test_labelled_subset_of_a_partly_labelled_split_draws_from_the_known_labels():
    part = data.load("digits").with_labelled(100, seed=0)
    fewer = part.with_labelled(20, seed=1)
    assert int(fewer.labelled.sum()) == 20 and not (fewer.labelled & ~part.labelled).any()


@pytest.mark.parametrize("n, message", [
    (1438, "more than the 1437 labelled examples"),
    (1430, "class 0"),  # 143 of each class needed; digits' training split has fewer zeros than that
])
def test_labelled_errors(n: int, message: str):
    with pytest.raises(DgmError, match=message):
        data.load("digits").with_labelled(n, seed=0)


def test_labelled_errors_without_labels():
    with pytest.raises(DgmError, match="no labels"):
        data.load("moons").with_labelled(10, seed=0)


def test_load_data_applies_labelled_to_the_training_split_only():
    config = RunConfig("vae", data=DataConfig(name="digits", labelled=40, seed=5, max_examples=600))
    train = load_data(config, "train")
    test = load_data(config, "test")
    assert len(train) == 600 and int(train.labelled.sum()) == 40
    assert torch.equal(train.labelled, data.load("digits").subset(600).with_labelled(40, 5).labelled)
    assert test.labelled is None
    config.set("data.labelled", "30")
    assert config.data.labelled == 30


# --- known factors ------------------------------------------------------------------------------------
def test_sprites_expose_their_factors_and_render_again_from_them():
    from dgm.data import sprites

    train = data.load("sprites")
    spec = train.spec
    assert (len(train), len(data.load("sprites", "test"))) == (10_000, 2_000)
    assert spec.shape == (1, 32, 32) and spec.kind == "image" and spec.num_classes == 3
    assert spec.extras["factors"] == ["shape", "scale", "rotation", "x", "y"]
    sizes = torch.tensor(spec.extras["factor_sizes"])
    assert train.factors.shape == (10_000, 5) and train.factors.dtype == torch.int64
    assert (train.factors >= 0).all() and (train.factors < sizes).all()
    assert torch.equal(train.labels, train.factors[:, 0])
    # the factors reproduce the images, twice over
    again = data.render(spec, train.factors[:300])
    assert torch.equal(again.raw, train.raw[:300])
    assert torch.equal(again.tensors().x, train.tensors(300).x)
    assert torch.equal(torch.from_numpy(sprites.render(train.factors[:50].numpy())), train.raw[:50])
    # subsets and batches keep the factors beside their examples
    assert torch.equal(train.subset(7).factors, train.factors[:7])
    g = torch.Generator().manual_seed(0)
    batch = next(train.batches(16, shuffle=True, generator=g))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:16]
    assert torch.equal(batch.factors, train.factors[order]) and torch.equal(batch.y, train.labels[order])
    assert data.load("digits").tensors(4).factors is None  # data without known factors has none


def test_sprites_factors_change_the_image_as_documented():
    from dgm.data import sprites

    base = [0, 5, 0, 7, 7]  # a big square in the middle
    moved = [[0, 5, 0, 8, 7], [0, 5, 0, 7, 8], [0, 0, 0, 7, 7], [1, 5, 0, 7, 7], [2, 5, 0, 7, 7], [0, 5, 5, 7, 7]]
    images = sprites.render(torch.tensor([base, *moved]).numpy()).astype(float)[:, 0]
    for image in images[1:]:
        assert (image != images[0]).any()
    cols = np.arange(32)
    centre_x = [(im.sum(0) * cols).sum() / im.sum() for im in images[:2]]
    centre_y = [(im.sum(1) * cols).sum() / im.sum() for im in (images[0], images[2])]
    assert centre_x[1] > centre_x[0] and centre_y[1] > centre_y[0]  # x goes right, y goes down
    assert images[3].sum() < images[0].sum()  # a smaller scale covers less
    # rotating a square by a quarter turn gives the same image (rotation index 10 of 40)
    quarter = sprites.render(np.array([[0, 5, 10, 7, 7]]))[0, 0]
    assert np.abs(quarter.astype(float) - images[0]).max() <= 1


def test_render_refuses_data_without_factors():
    with pytest.raises(DgmError, match="not rendered from known factors"):
        data.render(data.load("digits").spec, torch.zeros(2, 5, dtype=torch.long))


# --- token sequences --------------------------------------------------------------------------------
def write_lines(path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_text_lines_are_padded_byte_tokens_with_a_mask(tmp_path):
    lines = [f"line {i} " + "x" * (i % 13) for i in range(40)] + ["", "é" * 3, "y" * 300]
    write_lines(tmp_path / "notes.txt", lines)
    train, test = data.load(f"text:{tmp_path / 'notes.txt'}"), data.load(f"text:{tmp_path / 'notes.txt'}", "test")
    spec = train.spec
    assert spec.kind == "tokens" and spec.vocab_size == 256 and spec.shape == (256,)
    assert spec.representation == "levels" and spec.is_variable_length and not spec.is_image
    assert spec.extras["too_long"] == 1  # the 300-byte line; the empty one is no sequence
    assert len(train) + len(test) == 41 and len(test) == 5
    expected = {s.encode() for s in lines if 0 < len(s.encode()) <= 256}
    batch = train.tensors()
    assert batch.x.dtype == torch.int64 and batch.mask.shape == batch.x.shape and batch.mask.dtype == torch.bool
    got = set()
    for x, mask, length in zip(batch.x, batch.mask, train.lengths):
        assert int(mask.sum()) == int(length) and mask[:length].all() and not mask[length:].any()
        assert (x[~mask] == 0).all()  # padding
        got.add(bytes(x[mask].tolist()))
    assert got <= expected and len(got) == len(train)
    t = test.tensors()
    assert "é".encode() * 3 in got | {bytes(x[m].tolist()) for x, m in zip(t.x, t.mask)}


def test_docs_split_at_blank_lines_folders_read_every_file_and_size_sets_the_context(tmp_path):
    (tmp_path / "corpus" / "sub").mkdir(parents=True)
    (tmp_path / "corpus" / "a.txt").write_bytes(b"first doc\nstill first\n\n  \nsecond doc\r\n\r\nthird")
    (tmp_path / "corpus" / "sub" / "b.txt").write_bytes(b"fourth doc\n" + b"z" * 40 + b"\n")
    (tmp_path / "corpus" / ".hidden").write_bytes(b"not read")
    docs = data.load(f"docs:{tmp_path / 'corpus'}", size=32)
    both = docs.tensors().x.tolist() + data.load(f"docs:{tmp_path / 'corpus'}", "test", size=32).tensors().x.tolist()
    got = {bytes(row).rstrip(b"\x00") for row in both}
    assert got == {b"first doc\nstill first", b"second doc", b"third"}  # the 51-byte doc is too long
    assert docs.spec.shape == (32,) and docs.spec.extras["too_long"] == 1
    lines = data.load(f"text:{tmp_path / 'corpus'}", size=64)
    assert len(lines) + len(data.load(f"text:{tmp_path / 'corpus'}", "test", size=64)) == 6  # every non-blank line, b.txt's too


@pytest.mark.parametrize(("content", "size", "message"), [
    (b"", None, "holds 0 sequence"),
    (b"\n\n  \n", None, "holds 0 sequence"),
    (b"text\x00with a NUL\n", None, "not a text file .it holds NUL bytes, at byte 4"),
    (b"a" * 50 + b"\n\n" + b"b" * 60, 16, "the longest is 60 bytes: raise data.size"),
])
def test_text_that_cannot_be_sequences_is_refused_in_one_line(tmp_path, content, size, message):
    (tmp_path / "t.txt").write_bytes(content)
    for kind in ("text", "docs"):
        with pytest.raises(DgmError, match=message) as info:
            data.load(f"{kind}:{tmp_path / 't.txt'}", size=size)
        assert "\n" not in str(info.value)
    with pytest.raises(DgmError, match="no such file or folder"):
        data.load(f"text:{tmp_path / 'missing.txt'}")
    (tmp_path / "ok.txt").write_bytes(b"one\ntwo\n")
    with pytest.raises(DgmError, match="channels applies to images"):
        data.load(f"text:{tmp_path / 'ok.txt'}", channels=1)


def test_token_batches_are_deterministic_and_keep_masks_with_their_examples(tmp_path):
    write_lines(tmp_path / "t.txt", ["a" * (1 + i % 30) for i in range(100)])
    ds = data.load(f"text:{tmp_path / 't.txt'}")
    runs = [[(b.x, b.mask) for b in ds.batches(16, shuffle=True, generator=torch.Generator().manual_seed(1))]
            for _ in range(2)]
    for (x1, m1), (x2, m2) in zip(*runs):
        assert torch.equal(x1, x2) and torch.equal(m1, m2)
        assert torch.equal(m1, x1 != 0)  # "a" is never a zero byte, so the mask is where the text is
    sub = ds.subset(10).to("cpu")
    assert torch.equal(sub.tensors().mask, ds.tensors(10).mask)


def test_tokens_refuse_other_representations(tmp_path):
    write_lines(tmp_path / "t.txt", ["ab", "cd", "ef"])
    with pytest.raises(DgmError, match="only the 'levels' representation"):
        data.load(f"text:{tmp_path / 't.txt'}", representation="unit")


def test_fortunes_split_records_and_say_how_to_get_them(tmp_path, monkeypatch):
    from dgm.data import sequences

    monkeypatch.setattr(sequences, "FORTUNES_DIR", tmp_path / "none")
    sequences._fortunes.cache_clear()
    with pytest.raises(DgmError, match="apt-get install fortunes-min"):
        data.load("fortunes")
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "wisdom").write_text("one\nfortune\n%\ntwo\n%\nthree\n%\n")
    (tmp_path / "f" / "wisdom.dat").write_bytes(b"\x00\x01binary index")
    monkeypatch.setattr(sequences, "FORTUNES_DIR", tmp_path / "f")
    sequences._fortunes.cache_clear()
    try:
        batches = [data.load("fortunes", split).tensors() for split in ("train", "test")]
        got = {bytes(x[m].tolist()) for b in batches for x, m in zip(b.x, b.mask)}
        assert got == {b"one\nfortune", b"two", b"three"}
    finally:
        sequences._fortunes.cache_clear()


# --- point sets ---------------------------------------------------------------------------------------
def test_shapes2d_point_sets_have_masks_and_lie_on_their_outlines():
    train = data.load("shapes2d")
    spec = train.spec
    assert spec.kind == "points" and spec.shape == (64, 2) and spec.representation == "continuous"
    assert (len(train), len(data.load("shapes2d", "test"))) == (10_000, 2_000)
    assert int(train.lengths.min()) == 8 and int(train.lengths.max()) == 64
    batch = train.tensors(500)
    assert batch.mask.shape == (500, 64) and torch.equal(batch.mask.sum(1), train.lengths[:500])
    assert (batch.x[~batch.mask] == 0).all()
    for x, mask, label in zip(batch.x[:50], batch.mask, batch.y):
        p = x[mask].double()
        c = (p.max(0).values + p.min(0).values) / 2  # the outline's centre, from its extent
        d = p - c
        if label == 0:  # a circle: every point at one distance from the centre
            r = d.norm(dim=1)
        else:  # a square: every point at one sup-norm distance
            r = d.abs().max(dim=1).values
        assert float(r.max() - r.min()) < 0.15
    # deterministic: the same sets on every load, and another set for the test split
    assert torch.equal(data.load("shapes2d").raw, train.raw)
    assert not torch.equal(data.load("shapes2d", "test").raw[:100], train.raw[:100])


def test_points_refuse_other_representations():
    with pytest.raises(DgmError, match="only the 'continuous' representation"):
        data.load("shapes2d").with_representation("unit")


def test_old_specs_without_a_kind_still_load():
    old = {"name": "digits", "shape": [1, 8, 8], "representation": "unit", "levels": 17, "num_classes": 10,
           "class_names": None, "extras": {}}
    assert data.DataSpec.from_json(old).kind == "image"
    assert data.DataSpec.from_json({**old, "name": "moons", "shape": [2], "levels": None,
                                    "representation": "continuous"}).kind == "vector"
