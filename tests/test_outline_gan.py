"""Known answers of ``outline-gan`` (a sentence autoencoder, then WGAN-GP over its embeddings) and
of the text metrics: the gradient penalty of a linear critic against its closed form, phases that
move only their own players, the two stages with the encoder frozen in the second, the decoder's
causal order, a uniform decoder's 8 bits per byte, sampling with top-k 1 against greedy decoding;
BLEU by hand, self-BLEU against the direct computation (and NLTK where installed), the embedding
Frechet distance of a set with itself, and the perplexity of samples under a uniform language model."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import image_dataset
from test_contract import token_dataset
from dgm.errors import DgmError
from dgm.eval import evaluate
from dgm.eval.text_quality import bleu, embedding_frechet_distance, sample_perplexity, self_bleu
from dgm.models import Progress, create
from dgm.models.base import config_to_json, make_config
from dgm.models.outline_gan import OutlineGAN
from dgm.train import checkpoint as ckpt
from dgm.train.trainer import TrainConfig, Trainer

TINY = {"embed_dim": 4, "width": 8, "encoder_hidden": 8, "decoder_hidden": 16, "noise_dim": 3, "hidden": (16,),
        "critic_steps": 2, "autoencoder_epochs": 1}


def build(seed: int = 0, **settings) -> tuple[OutlineGAN, object]:
    data = token_dataset()
    torch.manual_seed(seed)
    return create("outline-gan", data.spec, **{**TINY, **settings}), data


# --- the game -----------------------------------------------------------------------------------------
def test_the_gradient_penalty_of_a_linear_critic_is_its_closed_form():
    """f(e) = w.e has ||grad f|| = ||w|| everywhere: the critic's loss is w.(mean e~ - mean e) + lambda (||w|| - 1)^2,
    whatever the interpolation draws; its value and its gradient in w match autograd of that formula."""
    model, _ = build(gradient_penalty=3.0)
    model.critic = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        model.critic.weight.copy_(torch.tensor([[0.3, -1.2, 0.5, 2.0]]))
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    out = model.critic_objective(real, fake, generator=g)
    out.loss.backward()
    w = model.critic.weight.detach()[0].clone().requires_grad_(True)
    expected = w @ (fake.mean(0) - real.mean(0)) + 3.0 * (w.norm() - 1) ** 2
    expected.backward()
    torch.testing.assert_close(out.loss, expected.detach())
    torch.testing.assert_close(out.metrics["gradient_penalty"], (w.norm().detach() - 1) ** 2)
    torch.testing.assert_close(model.critic.weight.grad[0], w.grad)


def test_each_phase_moves_only_its_own_parameters_and_the_phases_cover_the_model():
    model, data = build()
    phases = {p.name: p for p in model.phases()}
    owned = {name: {id(q) for q in p.parameters} for name, p in phases.items()}
    assert sum(map(len, owned.values())) == len(set().union(*owned.values())) == len(list(model.parameters()))
    assert (phases["critic"].steps, phases["critic"].lr, phases["critic"].betas) == (2, 1e-4, (0.0, 0.9))
    batch = data.tensors(16)
    for name, phase in phases.items():
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        model.loss(batch, name, Progress(generator=torch.Generator().manual_seed(1))).loss.backward()
        # no gradient is even computed for the encoder and the decoder in the game's phases, nor
        # for the generator in the critic's (its samples are drawn without a graph)
        grads = {n for n, p in model.named_parameters() if p.grad is not None}
        if name == "critic":
            assert grads == {n for n, p in model.named_parameters() if id(p) in owned["critic"]}
        if name == "generator":
            assert not any(n.startswith(("encoder.", "decoder.")) for n in grads)
        torch.optim.Adam(phase.parameters, lr=0.1).step()
        moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert moved and moved <= {n for n, p in model.named_parameters() if id(p) in owned[name]}, name


def test_two_stages_and_the_game_trains_on_the_frozen_encoders_embeddings():
    model, data = build()
    stages = model.stages()
    assert [(s.name, [p.name for p in s.phases], s.epochs) for s in stages] == \
        [("autoencoder", ["autoencoder"], 1), ("gan", ["critic", "generator"], None)]
    calls = []
    loss = model.loss

    def recording(batch, phase, progress):  # noqa: ANN001, ANN202
        calls.append((phase, progress.stage, model.encoder.out.weight.detach().clone(),
                      model.decoder.head.weight.requires_grad, model.encoder.out.weight.requires_grad))
        return loss(batch, phase, progress)

    model.loss = recording
    config = TrainConfig(epochs=2, batch_size=16, progress=False, device="cpu", sample_every=0, log_every=1)
    Trainer(model, data, config).fit()
    first = [i for i, c in enumerate(calls) if c[1] == "gan"][0]
    assert first > 0 and all(c[0] == "autoencoder" for c in calls[:first])
    assert {c[0] for c in calls[first:]} == {"critic", "generator"}
    frozen = calls[first][2]
    assert not torch.equal(calls[0][2], frozen)  # the autoencoder stage moved the encoder
    assert all(torch.equal(c[2], frozen) and not c[3] and not c[4] for c in calls[first:])
    assert torch.equal(model.encoder.out.weight, frozen) and model.encoder.out.weight.requires_grad


# --- the autoencoder ----------------------------------------------------------------------------------
def test_decoder_output_t_depends_on_inputs_up_to_t_and_on_the_embedding():
    model, _ = build()
    net = model.decoder
    seen = []

    def keep(module, inputs, out):  # noqa: ANN001, ANN202 (a forward hook: returns None, output unchanged)
        out.retain_grad()
        seen.append(out)

    net.embedding.register_forward_hook(keep)
    ids = torch.randint(0, 257, (2, 10), generator=torch.Generator().manual_seed(0))
    e = torch.randn(2, 4, requires_grad=True)
    logits, _ = net(ids, e)
    for t in range(10):
        grad_x, grad_e = torch.autograd.grad(logits[:, t].sum(), (seen[0], e), retain_graph=True)
        assert (grad_x[:, t + 1:] == 0).all(), f"output {t} sees a later input"
        assert (grad_x[:, :t + 1].abs().sum((0, 2)) > 0).all() and (grad_e.abs().sum(1) > 0).all()


def test_the_encoder_reads_the_real_tokens_and_not_the_padding():
    model, data = build()
    x, mask = data.tensors(8).x, data.tensors(8).mask
    noisy = torch.where(mask, x, torch.randint(1, 256, x.shape, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(model.encode(noisy, mask), model.encode(x), rtol=0, atol=0)
    assert not torch.allclose(model.encode(x[:1]), model.encode(x[1:2]))


def test_a_uniform_decoder_costs_exactly_8_bits_per_scored_byte():
    model, data = build(embedding_noise=0.0)
    with torch.no_grad():
        model.decoder.head.weight.zero_()
        model.decoder.head.bias.zero_()
    out = model.loss(data.tensors(16), "autoencoder", Progress())
    torch.testing.assert_close(out.metrics["bits_per_char"], torch.tensor(8.0))
    batch = data.tensors(16)
    e = model.encode(batch.x, batch.mask)
    lengths = batch.mask.sum(1)
    torch.testing.assert_close(model.step_log_probs(batch.x, e, batch.mask).sum(1),
                               -(lengths + 1).float() * math.log(256))  # real bytes and the end token


def test_a_few_autoencoder_steps_lower_its_loss():
    model, data = build(embedding_noise=0.0)
    batch = data.tensors(32)
    opt = torch.optim.Adam(model.phases()[0].parameters, lr=1e-2)
    losses = []
    for _ in range(25):
        out = model.loss(batch, "autoencoder", Progress())
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.7 * losses[0]


# --- generation -----------------------------------------------------------------------------------------
def test_top_k_1_sampling_is_greedy_decoding_of_the_generators_outlines():
    model, _ = build()
    x = model.sample(6, top_k=1, generator=torch.Generator().manual_seed(3))
    e = model.generate_embeddings(6, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(x, model.decode(e), rtol=0, atol=0)
    after_end = (x == 0).long().cumsum(1) > 0
    assert (x[after_end] == 0).all()


def test_samples_start_with_the_prompt_and_bad_options_are_refused():
    model, _ = build()
    x = model.sample(3, prompt="the ", generator=torch.Generator().manual_seed(0))
    assert (x[:, :4] == torch.tensor(list(b"the "))).all()
    with pytest.raises(DgmError, match="--top-p"):
        model.sample(2, top_p=1.5)
    with pytest.raises(DgmError, match="at most 31 bytes"):
        model.sample(2, prompt="x" * 40)
    with pytest.raises(DgmError, match="token sequences"):
        create("outline-gan", image_dataset(n=8).spec, **TINY)
    with pytest.raises(DgmError, match="model.hidden"):
        build(hidden=())


# --- the contract, on token data -----------------------------------------------------------------------
def test_contract_loss_gradients_sample_shape_determinism_and_save_load(tmp_path):
    model, data = build()
    batch = data.tensors(16)
    reached = set()
    for phase in model.phases():
        model.zero_grad()
        out = model.loss(batch, phase.name, Progress())
        assert out.loss.ndim == 0 and torch.isfinite(out.loss)
        out.loss.backward()
        reached |= {id(p) for p in phase.parameters if p.grad is not None and p.grad.abs().sum() > 0}
    assert not [n for n, p in model.named_parameters() if id(p) not in reached]
    model.eval()
    x = model.sample(5, generator=torch.Generator().manual_seed(1))
    assert x.shape == (5, 32) and x.dtype == torch.long and not x.requires_grad
    torch.testing.assert_close(model.sample(5, generator=torch.Generator().manual_seed(1)), x, rtol=0, atol=0)
    ckpt.save_tensors(model.state_dict(), tmp_path / "w.safetensors")
    clone = OutlineGAN(make_config(OutlineGAN, config_to_json(model.config)), data.spec).eval()
    ckpt.load_state_dict_checked(clone, ckpt.load_tensors(tmp_path / "w.safetensors"), tmp_path)
    torch.testing.assert_close(clone.sample(5, generator=torch.Generator().manual_seed(1)), x, rtol=0, atol=0)
    z = model.encode(batch.x[:4])
    assert z.shape == (4, 4) and model.decode(z).shape == (4, 32)
    (title, text, columns, caption), = model.report_figures(generator=torch.Generator().manual_seed(0))
    assert isinstance(text, str) and columns == 0 and text.count("\n\n") == 3


# --- the metrics ----------------------------------------------------------------------------------------
def test_bleu_of_hand_computed_sentences():
    hyp, ref = "the cat sat on the mat".split(), "the cat is on the mat".split()
    # clipped precisions 5/6, 3/5, 1/4 and no 4-gram (smoothed to 0.1/3); equal lengths: no penalty
    assert bleu(hyp, [ref]) == pytest.approx((5 / 6 * 3 / 5 * 1 / 4 * 0.1 / 3) ** 0.25, rel=1e-12)
    # a short hypothesis: precisions 1, 1, then no trigram or 4-gram (0.1 / max(1, 0)); BP = exp(1 - 6/2)
    assert bleu("the cat".split(), [hyp]) == pytest.approx(math.exp(-2) * 0.1 ** 0.5, rel=1e-12)
    # the closest reference length decides the penalty (ties: the shorter), clips by the best reference
    assert bleu("a a a a".split(), [["a"] * 2, ["a"] * 3, ["a", "b", "c", "d", "e"]]) == pytest.approx(
        (3 / 4 * 2 / 3 * 1 / 2 * 0.1 / 1) ** 0.25, rel=1e-12)
    assert bleu(hyp, [hyp]) == 1.0
    assert bleu(["x", "y"], [hyp]) == 0.0  # no unigram in common


def test_self_bleu_is_one_for_identical_sentences_and_matches_the_direct_computation():
    assert self_bleu(["the cat sat on the mat"] * 3) == pytest.approx(1.0)
    g = torch.Generator().manual_seed(0)
    vocab = "a b c d e f".split()
    sentences = [" ".join(vocab[i] for i in torch.randint(0, 6, (int(n),), generator=g))
                 for n in torch.randint(1, 9, (12,), generator=g)]
    words = [s.split() for s in sentences]
    direct = sum(bleu(w, words[:i] + words[i + 1:]) for i, w in enumerate(words)) / len(words)
    assert self_bleu(sentences) == pytest.approx(direct, rel=1e-12)
    two = ["the cat sat on the mat", "the cat is on the mat"]
    a, b = (s.split() for s in two)
    assert self_bleu(two) == pytest.approx((bleu(a, [b]) + bleu(b, [a])) / 2)
    with pytest.raises(DgmError, match="at least 2"):
        self_bleu(["alone"])


def test_bleu_matches_nltk_sentence_bleu():
    nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")
    g = torch.Generator().manual_seed(1)
    vocab = "a b c d e".split()
    for _ in range(20):
        hyp, *refs = [[vocab[i] for i in torch.randint(0, 5, (int(n),), generator=g)]
                      for n in torch.randint(1, 10, (3,), generator=g)]
        expected = nltk_bleu.sentence_bleu(refs, hyp, smoothing_function=nltk_bleu.SmoothingFunction().method1)
        assert bleu(hyp, refs) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_embedding_frechet_distance_of_a_set_with_itself_is_zero():
    model, data = build()
    batch = data.tensors(40)
    assert embedding_frechet_distance(model, batch.x, batch.x, real_mask=batch.mask) == pytest.approx(0, abs=1e-6)
    fake = model.sample(40, generator=torch.Generator().manual_seed(0))
    assert embedding_frechet_distance(model, batch.x, fake, real_mask=batch.mask) > 1e-3


def test_the_text_metrics_run_through_the_evaluator():
    model, data = build()
    results = {r.metric: r for r in evaluate(model.eval(), data, ["self_bleu", "embedding_fid"], num_samples=20,
                                             progress=False)}
    assert 0 <= results["self_bleu"].value <= 1 and results["embedding_fid"].value >= 0
    # 5 lines of 2, 4, 2, 1, 3 words, 13 copies each: every n-gram matches, and each order beyond a
    # line's length counts 0.1 (smoothing 1), so BLEU-4 = 0.1^(orders missing / 4), averaged
    expected = sum(0.1 ** (max(0, 4 - n) / 4) for n in (2, 4, 2, 1, 3)) / 5
    assert results["self_bleu"].details["data_self_bleu"] == pytest.approx(expected, rel=1e-12)


def test_sample_perplexity_under_a_uniform_language_model_is_256_per_character():
    data = token_dataset()
    lm = create("lstm-lm", data.spec, width=8, hidden=8, layers=1)
    with torch.no_grad():
        lm.network.head.weight.zero_()
        lm.network.head.bias.zero_()
    x = data.tensors(10).x
    out = sample_perplexity(lm, x, batch_size=3)
    assert out.perplexity == pytest.approx(256, rel=1e-6) and out.bits_per_char == pytest.approx(8, rel=1e-6)  # float32 logits
    assert out.units == int(((x != 0).sum(1) + 1).sum()) and out.sequences == 10
    with pytest.raises(DgmError, match="log_prob"):
        sample_perplexity(build()[0], x)
    with pytest.raises(DgmError, match="data.size"):
        sample_perplexity(lm, x[:, :16])
