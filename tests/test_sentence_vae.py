"""Known answers of the sentence VAE (``sentence-vae``, Bowman et al. 2016): p(x|z) sums to 1 over every
sequence of a short context, the ELBO is log p(x|z) minus the closed-form KL at the same z, IWAE >= ELBO
with k = 1 the same bound in expectation and its weight checked against torch.distributions, exactly 8
bits per token through the evaluator from a uniform decoder and an encoder at the prior, the decoder's
causal order, word dropout only in training and never on the start symbol, training that lowers the
loss, and the contract checks on the contract's token data."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from dgm.data.core import DataSpec
from dgm.errors import DgmError
from dgm.eval import evaluate
from dgm.models import Progress, capabilities, create
from dgm.models.base import config_to_json, make_config
from dgm.models.sentence_vae import SentenceVAE
from dgm.train import checkpoint as ckpt
from test_contract import token_dataset

TINY = {"latent_dim": 4, "width": 8, "hidden": 16}


def build(spec: DataSpec | None = None, seed: int = 0, **settings) -> SentenceVAE:
    torch.manual_seed(seed)
    return create("sentence-vae", spec or token_dataset().spec, **{**TINY, **settings}).eval()


def spread_posterior(model: SentenceVAE) -> None:
    """Scale the encoder's output so q(z|x) is far from the prior and differs between sequences."""
    with torch.no_grad():
        model.encoder.head.weight.mul_(8)


# --- the likelihood and the bounds --------------------------------------------------------------------
def test_p_x_given_z_sums_to_one_over_every_sequence_of_a_short_context():
    """Vocabulary {END, 1, 2}, L = 3: the 1 + 2 + 4 + 8 sequences of 0..3 real tokens (the first three
    with their end token, the full ones without) are every outcome of the decoder for a fixed z."""
    model = build(DataSpec("tiny", (3,), "levels", levels=3, kind="tokens"))
    rows = [list(seq) + [0] * (3 - n) for n in range(4) for seq in itertools.product([1, 2], repeat=n)]
    x = torch.tensor(rows)
    z = torch.randn(1, TINY["latent_dim"], generator=torch.Generator().manual_seed(3)).expand(len(x), -1)
    with torch.no_grad():
        log_px = model.log_likelihood(x, None, z)
    assert len(x) == 15
    torch.testing.assert_close(log_px.double().logsumexp(0), torch.tensor(0.0, dtype=torch.float64),
                               atol=1e-5, rtol=0)


def test_elbo_is_log_p_x_given_z_minus_the_closed_form_kl():
    data = token_dataset()
    model = build()
    spread_posterior(model)
    batch = data.tensors(6)
    with torch.no_grad():
        elbo = model.elbo(batch.x, mask=batch.mask, generator=torch.Generator().manual_seed(7))
        mu, logvar = model.posterior(batch.x, batch.mask)
        std = (0.5 * logvar).exp()
        kl = kl_divergence(Normal(mu, std), Normal(torch.zeros_like(mu), torch.ones_like(std)))  # (B, d)
        eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(7))  # the same draw
        reconstruction = model.log_likelihood(batch.x, batch.mask, mu + std * eps)
    torch.testing.assert_close(model.kl_per_dim(batch.x, mask=batch.mask).detach(), kl)
    assert (kl.sum(-1) > 0.1).all()  # the check is not of a collapsed posterior
    torch.testing.assert_close(elbo, reconstruction - kl.sum(-1))


def test_iwae_is_above_the_elbo_and_k_1_is_the_elbo_in_expectation():
    data = token_dataset()
    model = build()
    spread_posterior(model)
    batch = data.tensors(5)
    x, mask = batch.x, batch.mask
    torch.manual_seed(0)
    with torch.no_grad():
        # one importance weight by hand at the same z: log p(x|z) + log p(z) - log q(z|x)
        one = model.iwae_bound(x, 1, mask=mask, generator=torch.Generator().manual_seed(5))
        mu, logvar = model.posterior(x, mask)
        q = Normal(mu, (0.5 * logvar).exp())
        z = mu + q.scale * torch.randn(mu.shape, generator=torch.Generator().manual_seed(5))
        by_hand = (model.log_likelihood(x, mask, z) + Normal(0.0, 1.0).log_prob(z).sum(-1)
                   - q.log_prob(z).sum(-1))
        torch.testing.assert_close(one, by_hand)
        # E[L_1] = E[log p(x|z)] - KL = E[ELBO]: means of 400 independent draws of each
        draws = 400
        log_w = model.log_weights(x, draws, mask)  # (draws, B)
        elbos = model.elbo(x.repeat(draws, 1), mask=mask.repeat(draws, 1)).view(draws, -1)
        difference = log_w.mean(0) - elbos.mean(0)
        stderr = ((log_w.var(0) + elbos.var(0)) / draws).sqrt()
        assert (difference.abs() < 5 * stderr + 1e-3).all(), (difference, stderr)
        iwae = model.iwae_bound(x, 64, chunk=16, mask=mask)
    assert (iwae.mean() > elbos.mean(0).mean())  # L_64 >= L_1 on average
    assert (iwae <= 0).all() and (elbos <= 0).all()  # bounds on the log of a pmf


def test_a_uniform_decoder_with_the_prior_as_posterior_gives_8_bits_per_scored_token_through_the_evaluator():
    """With q(z|x) = p(z) and p(x|z) uniform over the 256 bytes, every bound is exactly log p(x), and
    the nll metric divides by the real tokens plus each shorter sequence's end token."""
    data = token_dataset()
    model = build()
    with torch.no_grad():
        for head in (model.encoder.head, model.decoder.head):
            head.weight.zero_()
            head.bias.zero_()
    n = data.lengths
    units = n + (n < 32).long()
    batch = data.tensors()
    with torch.no_grad():
        torch.testing.assert_close(-model.iwae_bound(batch.x, 3, mask=batch.mask).double(),
                                   units.double() * math.log(256))
    results = {(r.metric, r.unit): r
               for r in evaluate(model, data, ["nll", "elbo"], k=3, progress=False, batch_size=16)}
    assert results["nll", "bits/token"].value == pytest.approx(8.0, rel=1e-6)
    assert results["neg_elbo", "bits/token"].value == pytest.approx(8.0, rel=1e-6)
    assert "IWAE k=3" in results["nll", "bits/token"].qualifier


# --- the decoder -------------------------------------------------------------------------------------
def test_decoder_logits_at_a_position_do_not_depend_on_later_inputs():
    model = build()
    decoder = model.decoder
    ids = torch.randint(1, 256, (2, 6), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = decoder.start
    inputs = decoder.embedding(ids).detach().requires_grad_(True)  # (2, 6, width)
    z = torch.randn(2, TINY["latent_dim"], requires_grad=True)
    logits, _ = decoder.from_embeddings(inputs, z)
    for t in range(6):
        grad_inputs, grad_z = torch.autograd.grad(logits[:, t].sum(), (inputs, z), retain_graph=True)
        reach = grad_inputs.abs().sum((0, 2))  # (6,)
        assert (reach[t + 1:] == 0).all() and (reach[:t + 1] > 0).all(), (t, reach)
        assert grad_z.abs().sum() > 0  # every step reads the code


def test_word_dropout_only_in_training_and_never_on_the_start_symbol():
    model = build(word_dropout=1.0)
    start, unk = model.decoder.start, model.decoder.unk
    inputs = torch.cat([torch.full((64, 1), start), torch.randint(1, 256, (64, 19))], 1)
    dropped = model.word_dropout(inputs, 1.0, torch.Generator().manual_seed(0))
    assert (dropped[:, 0] == start).all() and (dropped[:, 1:] == unk).all()
    half = model.word_dropout(inputs, 0.5, torch.Generator().manual_seed(0))
    assert (half[:, 0] == start).all() and 0.4 < (half[:, 1:] == unk).float().mean() < 0.6
    assert (model.word_dropout(inputs, 0.0, None) == inputs).all()

    # the loss drops words in training only; the bounds never do
    batch = token_dataset().tensors(8)
    kept = build(word_dropout=0.0)
    with torch.no_grad():
        loss = {m: m.loss(batch, "model", Progress(generator=torch.Generator().manual_seed(1))).loss
                for m in (model, kept)}
        assert loss[model] == loss[kept]  # both in eval mode: no dropout
        model.train()
        assert loss[model] != model.loss(batch, "model", Progress(generator=torch.Generator().manual_seed(1))).loss
        train_elbo = model.elbo(batch.x, mask=batch.mask, generator=torch.Generator().manual_seed(2))
        model.eval()
        torch.testing.assert_close(train_elbo, model.elbo(batch.x, mask=batch.mask,
                                                          generator=torch.Generator().manual_seed(2)))


def train(steps: int = 150, **settings) -> tuple[SentenceVAE, list[float], float]:
    """``steps`` Adam steps on the contract's corpus (5 lines repeated); the model, its losses and its last KL."""
    data = token_dataset()
    model = build(latent_dim=8, width=16, hidden=48, kl_warmup_steps=0, **settings).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for step in range(steps):
        batch = next(iter(data.batches(16, generator=generator)))
        out = model.loss(batch, "model", Progress(step=step, generator=generator))
        optimiser.zero_grad()
        out.loss.backward()
        optimiser.step()
        losses.append(out.loss.item())
    return model.eval(), losses, out.metrics["kl"].item()


def reconstructed(model: SentenceVAE) -> torch.Tensor:
    """Which of the corpus's five distinct lines greedy decoding of their posterior means gives back."""
    lines = token_dataset().tensors(5)
    return (model.decode(model.encode(lines.x, mask=lines.mask)) == lines.x.long()).all(1)


def test_training_lowers_the_loss_and_word_dropout_keeps_the_code_in_use():
    """Without counter-measures the decoder learns the corpus (5 lines) on its own and the posterior
    collapses (KL ~ 0, the lines cannot be told apart from their codes: Bowman sec. 3.1); with word
    dropout it must read z, and greedy decoding of each line's code gives the line back."""
    collapsed, losses, kl = train(word_dropout=0.0)
    assert losses[0] == pytest.approx(math.log(256), rel=0.05)  # about uniform at initialisation
    assert sum(losses[-10:]) / 10 < 0.5, losses[-10:]
    assert kl < 0.2 and not reconstructed(collapsed).all()
    used, losses, kl = train(word_dropout=0.5)
    assert sum(losses[-10:]) / 10 < 1.0, losses[-10:]
    assert kl > 1.0 and reconstructed(used).all()


# --- the contract, on the contract's token data -------------------------------------------------------
def test_contract_loss_gradients_samples_save_load_and_capabilities(tmp_path):
    data = token_dataset()
    model = build().train()
    out = model.loss(data.tensors(16), "model", Progress())
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert {"kl", "bits_per_char", "beta"} <= set(out.metrics)
    out.loss.backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]

    model.eval()
    x = model.sample(5, generator=torch.Generator().manual_seed(1))
    assert x.shape == (5, 32) and x.dtype == torch.long and not x.requires_grad
    torch.testing.assert_close(model.sample(5, generator=torch.Generator().manual_seed(1)), x, rtol=0, atol=0)
    ended = (x == 0).long().cumsum(1) > 0  # padded after the end token
    assert (x[ended] == 0).all()
    ckpt.save_tensors(model.state_dict(), tmp_path / "w.safetensors")
    clone = SentenceVAE(make_config(SentenceVAE, config_to_json(model.config)), data.spec).eval()
    ckpt.load_state_dict_checked(clone, ckpt.load_tensors(tmp_path / "w.safetensors"), tmp_path)
    torch.testing.assert_close(clone.sample(5, generator=torch.Generator().manual_seed(1)), x, rtol=0, atol=0)

    have = capabilities(model)
    assert {"sample", "elbo", "iwae_bound", "kl_per_dim", "encode", "decode", "reconstruct"} <= have
    assert "log_prob" not in have
    batch = data.tensors(4)
    with torch.no_grad():
        assert model.elbo(batch.x).shape == (4,) and model.iwae_bound(batch.x, 3).shape == (4,)
        assert (model.kl_per_dim(batch.x) >= 0).all()
        z = model.encode(batch.x)
        assert z.shape == (4, TINY["latent_dim"]) and model.decode(z).shape == (4, 32)
    # unmasked calls find the real tokens themselves (the bytes before the first 0)
    torch.testing.assert_close(model.encode(batch.x), model.encode(batch.x, mask=batch.mask))

    figures = model.report_figures(generator=torch.Generator().manual_seed(0))
    (title, text, columns, caption), = figures
    assert title == "Interpolations" and isinstance(text, str) and columns == 0
    assert text.count("\n") + 1 == 3 * 8  # a header and 7 decodings per pair


def test_samples_take_the_language_models_options_and_bad_values_are_refused():
    model = build()
    g = torch.Generator().manual_seed(0)
    x = model.sample(3, generator=g, prompt="he", top_p=0.9, temperature=0.7)
    assert (x[:, :2] == torch.tensor(list(b"he"))).all()
    greedy = model.sample(3, generator=torch.Generator().manual_seed(4), top_k=1)
    z = torch.randn(3, TINY["latent_dim"], generator=torch.Generator().manual_seed(4))
    assert (greedy == model.decode(z)).all()  # top-k 1 is greedy decoding of the same codes
    with pytest.raises(DgmError, match="--top-p"):
        model.sample(2, top_p=1.5)
    with pytest.raises(DgmError, match="NUL"):
        model.sample(2, prompt="a\0b")
    with pytest.raises(DgmError, match="no sampler"):
        model.sample(2, sampler="beam")
    with pytest.raises(DgmError, match="model.word_dropout"):
        create("sentence-vae", token_dataset().spec, word_dropout=1.5)
    image = DataSpec("pictures", (1, 8, 8), "levels", levels=256, kind="image")
    with pytest.raises(DgmError, match="token sequences"):
        create("sentence-vae", image)
