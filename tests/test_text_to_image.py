"""The DALL-E-style model (dgm.models.text_to_image): teacher forcing respects the masks, the cached
sampler matches the parallel pass, the loss is the paper's weighted cross-entropy, reranking keeps the
best candidate, and bad captions are refused in one line (Python and the command line)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import CLASS_CAPTIONS as CLASS_NAMES, captioned_blobs, image_dataset
from dgm.errors import DgmError
from dgm.models import Progress, create, model_class
from dgm.models.base import make_config

TINY = dict(num_codes=8, code_dim=4, tokenizer_width=8, downsampling=2, width=16, depth=4, heads=2,
            reranker_width=8, reranker_dim=8, tokenizer_epochs=1, conv_kernel=3)


def build(**settings):
    data = captioned_blobs()
    torch.manual_seed(0)
    model = create("dalle", data.spec, **{**TINY, **settings}).eval()
    return model, data.with_representation(model.default_representation(model.config, data.spec))


@pytest.mark.parametrize("attention", ["sparse", "dense"])
def test_caption_never_sees_the_image_and_image_tokens_are_causal(attention):
    model, data = build(attention=attention)
    g = torch.Generator().manual_seed(0)
    captions = model.captions(["bottom right corner", "top left"])
    codes = torch.randint(0, 8, (2, *model.grid), generator=g)
    text, image = model.logits(captions, codes)
    N = codes[0].numel()
    for k in range(N):  # change image token k and everything after it
        changed = codes.flatten(1).clone()
        changed[:, k:] = (changed[:, k:] + 1 + torch.randint(0, 7, changed[:, k:].shape, generator=g)) % 8
        text2, image2 = model.logits(captions, changed.view_as(codes))
        torch.testing.assert_close(text2, text, rtol=0, atol=0)  # the caption never sees the image
        torch.testing.assert_close(image2[:, :k + 1], image[:, :k + 1], rtol=0, atol=0)  # token k from z_<k
        if k + 1 < N:
            assert not torch.allclose(image2[:, k + 1:], image[:, k + 1:])
    other = model.captions(["top right", "bottom"])  # the image tokens do see the caption
    assert not torch.allclose(model.logits(other, codes)[1], image)


def test_the_cached_sampler_draws_what_the_parallel_pass_predicts():
    model, _ = build()
    captions = model.captions(["bottom right corner", "top left", "bottom"])
    codes = model.draw_codes(captions, top_k=1)  # greedy, through the key-value cache
    _, image = model.logits(captions, codes)
    assert torch.equal(image.argmax(-1), codes.flatten(1))


def test_loss_is_the_weighted_per_token_cross_entropy():
    model, data = build(text_weight=0.25)
    batch = data.tensors(8)
    captions = model.captions([CLASS_NAMES[int(y)] for y in batch.y])
    codes = model.tokenizer.codes(batch.x)
    text, image = model.logits(captions, codes)

    def mean_nll(logits, target):  # by hand: -log softmax at the target, averaged over every token
        return -(logits.log_softmax(-1).gather(-1, target[..., None])).mean()

    expected = 0.25 * mean_nll(text, captions) + 0.75 * mean_nll(image, codes.flatten(1))
    loss = model.loss(batch, "transformer", Progress()).loss
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert F.cross_entropy(text.transpose(1, 2), captions).item() == pytest.approx(mean_nll(text, captions).item())


def test_reranking_keeps_the_candidate_the_contrastive_model_prefers(monkeypatch):
    model, _ = build()
    captions = model.captions(["top left", "bottom"])
    R = 4
    candidates = model.sample_captioned(captions.repeat(R, 1), generator=torch.Generator().manual_seed(3))
    # a contrastive model that prefers the darkest image
    monkeypatch.setattr(model.reranker, "similarity", lambda caps, images: -images.flatten(1).mean(1))
    best = model.sample_captioned(captions, generator=torch.Generator().manual_seed(3), rerank=R)
    darkest = candidates.view(R, 2, -1).mean(-1).argmin(0)
    torch.testing.assert_close(best, candidates.view(R, 2, *candidates.shape[1:])[darkest, torch.arange(2)])


def test_samples_by_caption_class_and_jointly():
    model, data = build()
    g = torch.Generator().manual_seed(0)
    assert model.sample(3, caption="Bottom right corner", generator=g).shape == (3, *data.spec.shape)
    assert model.sample(2, torch.tensor([0, 3]), generator=g).shape == (2, *data.spec.shape)
    drawn = model.draw_captions(50, generator=g)
    after_pad = (drawn == 0).long().cummax(1).values.bool()
    assert torch.all(drawn[after_pad] == 0)  # nothing follows the first padding token


@pytest.mark.parametrize("name", ["dalle", "aligndraw"])
def test_bad_captions_are_refused_in_one_line(name):
    """The refusals of the shared caption layer (models/captioned.py), for every model on it."""
    from test_align_draw import TINY as ALIGNDRAW_TINY

    tiny = {"dalle": TINY, "aligndraw": ALIGNDRAW_TINY}[name]
    cls = model_class(name)
    data = captioned_blobs()
    representation = cls.default_representation(make_config(cls, tiny), data.spec)
    model = create(name, data.with_representation(representation).spec, **tiny)
    with pytest.raises(DgmError, match="'purple'"):
        model.sample(2, caption="top purple")
    with pytest.raises(DgmError, match="6 words"):
        model.sample(2, caption="top left top left top left")
    with pytest.raises(DgmError, match="caption or a class"):
        model.sample(2, torch.tensor([0, 1]), caption="top left")
    with pytest.raises(DgmError, match="class 4"):
        model.sample(2, torch.tensor([0, 4]))
    with pytest.raises(DgmError, match="no sampler"):
        model.sample(2, sampler="ddim")
    with pytest.raises(DgmError, match="neither captions nor class names"):
        create(name, image_dataset(n=8, labels=True, representation=representation).spec, **tiny)


def test_the_convolutional_mask_needs_an_odd_kernel():
    with pytest.raises(DgmError, match="odd"):
        create("dalle", captioned_blobs().spec, **{**TINY, "conv_kernel": 4})


def test_command_line_caption_errors_exit_2(tmp_path, capsys, monkeypatch):
    from dgm.cli import main

    monkeypatch.setenv("DGM_TINY", "1")
    run = tmp_path / "run"
    settings = [f"model.{k}={v}" for k, v in TINY.items()]
    assert main(["train", "dalle", "--data", "scenes", "--epochs", "2", "--out", str(run), "--quiet",
                 *sum((["--set", s] for s in settings), [])]) == 0
    capsys.readouterr()
    assert main(["sample", str(run), "--caption", "a small purple circle", "-n", "2",
                 "--out", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'purple'" in err[0]
    assert main(["sample", str(run), "--caption", "a small red circle", "-n", "2",
                 "--out", str(tmp_path / "s.png")]) == 0
