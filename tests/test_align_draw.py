"""alignDRAW (dgm.models.align_draw): the Gaussian filterbank reads and writes what the formula says, the
alignment is a distribution over the real words only, the one-step bound equals a hand computation from
the modules (KL by torch.distributions), gradients reach every parameter, samples come by caption, class
or the class captions in turn, and bad captions are refused in one line."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from conftest import CLASS_CAPTIONS, captioned_blobs, vector_dataset
from dgm.data.captions import caption_ids
from dgm.errors import DgmError
from dgm.models import Progress, capabilities, create
from dgm.models.align_draw import AlignDRAW, filterbank, read, write
from dgm.models.base import make_config

TINY = dict(steps=2, latent_dim=3, hidden=8, embed_dim=4, caption_hidden=4, align_dim=4, read_size=2, write_size=2)


def build(**settings):
    config = make_config(AlignDRAW, {**TINY, **settings})
    data = captioned_blobs()
    data = data.with_representation(AlignDRAW.default_representation(config, data.spec))
    torch.manual_seed(0)
    return AlignDRAW(config, data.spec).eval(), data


def test_filterbank_at_stride_one_with_narrow_filters_reads_and_writes_the_centre_patch():
    x = torch.arange(2 * 25.0).view(1, 2, 5, 5)
    # centre g = (A + 1) / 2 = 3 (1-based), delta = (5 - 1) / (3 - 1) * 0.5 = 1, sigma^2 = e^-20, gamma = 1
    params = torch.tensor([[0.0, 0.0, -20.0, math.log(0.5), 0.0]])
    banks = filterbank(params, 3, 5, 5)
    torch.testing.assert_close(read(x, *banks), x[..., 1:4, 1:4])
    patch = torch.randn(1, 2, 3, 3)
    expected = torch.zeros(1, 2, 5, 5)
    expected[..., 1:4, 1:4] = patch
    torch.testing.assert_close(write(patch, *banks), expected)


def test_filterbank_matches_the_formula_by_hand():
    g = torch.Generator().manual_seed(0)
    H, W, N = 6, 7, 3
    params = torch.randn(2, 5, generator=g) * 0.5
    x = torch.rand(2, 1, H, W, generator=g)
    F_Y, F_X, gamma = filterbank(params, N, H, W)
    for b in range(2):
        gx_, gy_, log_var, log_delta, log_gamma = params[b].tolist()
        gx, gy = (W + 1) / 2 * (gx_ + 1), (H + 1) / 2 * (gy_ + 1)
        delta = (max(H, W) - 1) / (N - 1) * math.exp(log_delta)

        def row(centre: float, i: int, pixels: int) -> list[float]:  # filter i (1-based) over pixels 1..A
            mu = centre + (i - N / 2 - 0.5) * delta
            f = [math.exp(-(a - mu) ** 2 / (2 * math.exp(log_var))) for a in range(1, pixels + 1)]
            return [v / max(sum(f), 1e-8) for v in f]  # a filter far off the image reads ~0

        fy = torch.tensor([row(gy, i, H) for i in range(1, N + 1)])
        fx = torch.tensor([row(gx, i, W) for i in range(1, N + 1)])
        torch.testing.assert_close(F_Y[b], fy)
        torch.testing.assert_close(F_X[b], fx)
        assert gamma[b].item() == pytest.approx(math.exp(log_gamma))
        glimpse = [[math.exp(log_gamma) * sum(fy[i, h] * x[b, 0, h, w] * fx[j, w] for h in range(H) for w in range(W))
                    for j in range(N)] for i in range(N)]
        torch.testing.assert_close(read(x, F_Y, F_X, gamma)[b, 0], torch.tensor(glimpse))


def test_alignment_is_a_distribution_over_the_real_words_and_ignores_the_padding():
    model, _ = build()
    encoder = model.caption_encoder
    captions = model.captions(CLASS_CAPTIONS)  # 2, 2, 1 and 3 words of 3
    h_gen = torch.randn(4, model.config.hidden, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        h_lang, mask = encoder(captions)
        s, alpha = model.align(h_gen, h_lang, model.align.U(h_lang), mask)
        torch.testing.assert_close(alpha.sum(-1), torch.ones(4))
        assert torch.all(alpha[captions == 0] == 0) and torch.all(alpha[captions != 0] > 0)
        for b in range(4):  # each caption's words alone, read forwards and backwards by the LSTMs
            e = encoder.embedding(captions[b][captions[b] != 0])[None]
            alone = torch.cat([encoder.forward_lstm(e)[0], encoder.backward_lstm(e.flip(1))[0].flip(1)], -1)[0]
            torch.testing.assert_close(h_lang[b, :len(alone)], alone)
        encoder.embedding.weight[0] += 5.0  # another padding embedding changes nothing the model reads
        h_lang2, _ = encoder(captions)
        s2, alpha2 = model.align(h_gen, h_lang2, model.align.U(h_lang2), mask)
    torch.testing.assert_close(h_lang2[mask], h_lang[mask], rtol=0, atol=0)
    torch.testing.assert_close((s2, alpha2), (s, alpha), rtol=0, atol=0)


@pytest.mark.parametrize("read_attention", [True, False])
def test_one_step_bound_equals_a_hand_computation(read_attention):
    model, data = build(steps=1, read_attention=read_attention)
    batch = data.tensors(4)
    captions = caption_ids(batch, data.spec)
    rec, kl = model.terms(batch.x, captions, torch.Generator().manual_seed(7))
    loss = model.loss(batch, "model", Progress(generator=torch.Generator().manual_seed(7)))
    with torch.no_grad():
        B, x = len(batch.x), batch.x.float()
        h0 = torch.zeros(B, model.config.hidden)  # h^gen_0; the canvas c_0 = 0 shows sigmoid(0) = 1/2
        if read_attention:
            banks = filterbank(model.read_window(h0), 2, 8, 8)
            r = torch.cat([read(x, *banks).flatten(1), read(x - 0.5, *banks).flatten(1)], 1)
        else:
            r = torch.cat([x.flatten(1), (x - 0.5).flatten(1)], 1)
        h_infer, _ = model.infer_lstm(torch.cat([r, h0], 1))
        mu_q, log_var_q = model.posterior(h_infer).chunk(2, -1)
        prior_mean, prior_scale = model.prior(h0).chunk(2, -1)
        q, p = Normal(mu_q, (0.5 * log_var_q).exp()), Normal(torch.tanh(prior_mean), torch.tanh(prior_scale).exp())
        z = mu_q + (0.5 * log_var_q).exp() * torch.randn(B, 3, generator=torch.Generator().manual_seed(7))
        encoder, s = model.caption_encoder, []
        for b in range(B):
            e = encoder.embedding(captions[b][captions[b] != 0])[None]
            h_lang = torch.cat([encoder.forward_lstm(e)[0], encoder.backward_lstm(e.flip(1))[0].flip(1)], -1)[0]
            alpha = model.align.v(torch.tanh(model.align.U(h_lang) + model.align.W(h0[b]))).squeeze(-1).softmax(0)
            s.append(alpha @ h_lang)
        h_gen, _ = model.gen_lstm(torch.cat([z, torch.stack(s)], 1))
        patch = model.write_patch(h_gen).view(B, 1, 2, 2)
        canvas = write(patch, *filterbank(model.write_window(h_gen), 2, 8, 8))
        rec_hand = -F.binary_cross_entropy_with_logits(canvas, x, reduction="none").flatten(1).sum(1)
        kl_hand = kl_divergence(q, p).sum(-1)
    torch.testing.assert_close(rec, rec_hand)
    torch.testing.assert_close(kl[:, 0], kl_hand)
    torch.testing.assert_close(loss.loss, -(rec_hand - kl_hand).mean())
    torch.testing.assert_close(loss.metrics["conditional_elbo"], (rec_hand - kl_hand).mean())


@pytest.mark.parametrize("settings", [{}, {"read_attention": False}, {"likelihood": "logistic"}])
def test_loss_is_finite_and_gradients_reach_every_parameter(settings):
    model, data = build(steps=3, **settings)
    out = model.loss(data.tensors(16), "model", Progress())
    assert torch.isfinite(out.loss) and (out.metrics["kl"] >= 0)
    out.loss.backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert {"sample", "sample_captioned", "conditional_elbo"} <= capabilities(model)
    bound = model.conditional_elbo(data.tensors(4).x, data.tensors(4).y)  # class labels are captioned
    assert bound.shape == (4,) and torch.all(bound < 0)


def test_training_raises_the_bound():
    model, data = build(steps=4, hidden=16)
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = data.tensors(64)
    g = torch.Generator().manual_seed(0)
    bounds = []
    for _ in range(60):
        out = model.loss(batch, "model", Progress(generator=g))
        optimiser.zero_grad()
        out.loss.backward()
        optimiser.step()
        bounds.append(out.metrics["conditional_elbo"].item())
    assert sum(bounds[-10:]) / 10 > sum(bounds[:10]) / 10 + 5  # nats per image


def test_samples_by_caption_class_and_the_class_captions_in_turn():
    model, data = build()
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert model.sample(3, caption="Bottom right corner", generator=g()).shape == (3, *data.spec.shape)
    by_class = model.sample(2, torch.tensor([0, 3]), generator=g())
    torch.testing.assert_close(by_class, model.sample_captioned(model.captions([CLASS_CAPTIONS[0], CLASS_CAPTIONS[3]]),
                                                                generator=g()))
    in_turn = model.sample(5, generator=g())  # no p(y): the class captions 0, 1, 2, 3, 0
    torch.testing.assert_close(in_turn, model.sample_captioned(model.captions([*CLASS_CAPTIONS, CLASS_CAPTIONS[0]]),
                                                               generator=g()))
    [(title, images, per_row, _)] = model.report_figures(generator=g())
    assert images.shape == (4 * 8, *data.spec.shape) and per_row == 8


def test_what_only_aligndraw_refuses():  # the caption refusals it shares with dalle: test_text_to_image.py
    model, _ = build()
    with pytest.raises(DgmError, match="no reranker"):
        model.sample_captioned(model.captions(["top left"]), rerank=2)
    with pytest.raises(DgmError, match="draws images on a canvas"):
        create("aligndraw", vector_dataset().spec, **TINY)
