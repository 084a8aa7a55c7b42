"""Known answers of the VQ-VAE (van den Oord et al. 2017, arXiv:1711.00937): the straight-through
gradient, the EMA codebook update of appendix A.1 by hand, dead-code restarts, nearest codes by brute
force, perplexity, a prior that sums to one over every code grid, the bound against the exact
marginal, the two stages, the rate-distortion metric and the one-line refusals."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import pytest
import torch

from conftest import image_dataset, vector_dataset
from dgm.errors import DgmError
from dgm.models import Progress, capabilities, create
from dgm.models.base import GenerativeModel, capability
from dgm.nn.quantize import CodePriorNetwork, VectorQuantizer

TINY = {"num_codes": 8, "code_dim": 4, "width": 8, "num_res_blocks": 1, "downsampling": 2,
        "prior_width": 8, "prior_depth": 1, "prior_heads": 2, "vqvae_epochs": 1}


def blobs(n: int = 32, size: int = 8):
    return image_dataset(n=n, size=size)  # 17 levels, the "unit" representation the logistic likelihood reads


# --- the quantizer ---------------------------------------------------------------------------------
def test_straight_through_passes_the_gradient_at_z_q_unchanged_to_z_e():
    torch.manual_seed(0)
    vq = VectorQuantizer(5, 3).eval()  # eval: no codebook update
    z_e = torch.randn(2, 3, 2, 2, requires_grad=True)
    out = vq(z_e)
    e_k = vq.lookup(out.indices)
    torch.testing.assert_close(out.z_q, e_k, rtol=0, atol=1e-7)  # forward: the nearest code itself
    w = torch.randn(2, 3, 2, 2)

    def f(z):  # any function of the quantized grid
        return (z.pow(3) * w).sum()

    (through,) = torch.autograd.grad(f(out.z_q), z_e)
    at_z_q = e_k.clone().requires_grad_()
    (definition,) = torch.autograd.grad(f(at_z_q), at_z_q)  # df/dz_q, which the estimator hands to z_e
    torch.testing.assert_close(through, definition)
    # the commitment loss pulls z_e towards sg[e]: d/dz_e ||z_e - sg[e]||^2 = 2 (z_e - e)
    (commit,) = torch.autograd.grad(out.commitment.sum(), z_e)
    torch.testing.assert_close(commit, 2 * (z_e - e_k).detach())


def test_codebook_gets_the_codebook_loss_gradient_without_ema_and_none_with_it():
    torch.manual_seed(0)
    z_e = torch.randn(2, 3, 2, 2)
    vq = VectorQuantizer(5, 3, ema=False).eval()
    out = vq(z_e)
    (grad,) = torch.autograd.grad(out.codebook.sum(), vq.embedding)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 3)
    k = out.indices.flatten()
    expected = torch.zeros(5, 3).index_add_(0, k, 2 * (vq.embedding.detach()[k] - flat))  # d/de_k of ||z - e_k||^2
    torch.testing.assert_close(grad, expected)
    ema = VectorQuantizer(5, 3, ema=True)
    assert not list(ema.parameters()) and {"embedding", "embed_sum", "cluster_size"} <= dict(ema.named_buffers()).keys()


def test_ema_update_of_one_step_is_appendix_a1_with_laplace_smoothing_by_hand():
    gamma, eps = 0.9, 0.1
    vq = VectorQuantizer(3, 2, decay=gamma, epsilon=eps, restart_threshold=0.0).train()
    vq.embedding.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]))
    vq.cluster_size.copy_(torch.tensor([2.0, 1.0, 0.5]))  # N_i
    vq.embed_sum.copy_(torch.tensor([[1.0, 1.0], [10.0, 0.0], [0.0, 5.0]]))  # m_i
    # four vectors: three nearest code 0, one nearest code 1, none code 2; a (1, 2, 2, 2) grid
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 1.0], [0.0, 0.5]])
    out = vq(vectors.T.reshape(1, 2, 2, 2))
    assert out.indices.flatten().tolist() == [0, 0, 1, 0]
    # by hand: n = (3, 1, 0), sums = ((1, 1.5), (9, 1), (0, 0))
    N = [0.9 * 2 + 0.1 * 3, 0.9 * 1 + 0.1 * 1, 0.9 * 0.5 + 0.1 * 0]  # 2.1, 1.0, 0.45
    m = [[0.9 * 1 + 0.1 * 1, 0.9 * 1 + 0.1 * 1.5], [0.9 * 10 + 0.1 * 9, 0.9 * 0 + 0.1 * 1], [0.0, 0.9 * 5]]
    n = sum(N)  # 3.55
    smoothed = [(Ni + eps) / (n + 3 * eps) * n for Ni in N]
    e = [[mij / smoothed[i] for mij in m[i]] for i in range(3)]
    torch.testing.assert_close(vq.cluster_size, torch.tensor(N))
    torch.testing.assert_close(vq.embed_sum, torch.tensor(m))
    torch.testing.assert_close(vq.embedding, torch.tensor(e))
    # the batch was quantized with the codebook before the update
    torch.testing.assert_close(out.z_q.permute(0, 2, 3, 1).reshape(4, 2),
                               torch.tensor([[0.0, 0.0], [0.0, 0.0], [10.0, 0.0], [0.0, 0.0]]))
    # eval mode leaves every buffer alone
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    vq.eval()(vectors.T.reshape(1, 2, 2, 2))
    assert all(torch.equal(before[k], v) for k, v in vq.state_dict().items())


@pytest.mark.parametrize("ema", [True, False])
def test_dead_codes_restart_on_encoder_outputs_of_the_batch(ema):
    vq = VectorQuantizer(4, 2, ema=ema, decay=0.9, restart_threshold=0.5).train()
    with torch.no_grad():
        vq.embedding.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [100.0, 100.0]]))
        vq.cluster_size.copy_(torch.tensor([5.0, 5.0, 5.0, 0.1]))  # code 3: 0.09 after a step without use
        if ema:
            vq.embed_sum.copy_(vq.embedding * vq.cluster_size[:, None])
    z_e = torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    vq(z_e, generator=torch.Generator().manual_seed(1))
    batch = z_e.permute(0, 2, 3, 1).reshape(-1, 2)
    restarted = vq.embedding.detach()[3]
    assert (batch == restarted).all(1).any(), "code 3 was not moved onto an encoder output of the batch"
    assert vq.cluster_size[3] == 1.0 and (vq.cluster_size[:3] > 0.5).all()
    if ema:
        torch.testing.assert_close(vq.embed_sum[3], restarted)  # one assignment: m = e N with N = 1
    else:
        torch.testing.assert_close(vq.embedding.detach()[:3], torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))


def test_nearest_code_is_the_brute_force_argmin():
    g = torch.Generator().manual_seed(0)
    vq = VectorQuantizer(7, 3).eval()
    vq.embedding.copy_(torch.randn(7, 3, generator=g))
    z_e = torch.randn(2, 3, 4, 5, generator=g)
    got = vq.nearest(z_e)
    for b, i, j in itertools.product(range(2), range(4), range(5)):
        distances = [float(((z_e[b, :, i, j] - vq.embedding[k]) ** 2).sum()) for k in range(7)]
        assert got[b, i, j] == min(range(7), key=distances.__getitem__)


def test_perplexity_counts_the_codes_in_use():
    vq = VectorQuantizer(4, 4).eval()
    vq.embedding.copy_(10 * torch.eye(4))
    uniform = (10 * torch.eye(4)).T.reshape(1, 4, 2, 2)  # each code once
    out = vq(uniform)
    assert out.indices.flatten().tolist() == [0, 1, 2, 3]
    assert out.perplexity.item() == pytest.approx(4.0) and out.used.item() == 1.0
    one = torch.zeros(1, 4, 2, 2)
    one[:, 0] = 10.0  # every position at code 0
    out = vq(one)
    assert out.perplexity.item() == pytest.approx(1.0) and out.used.item() == 0.25


# --- the prior and the bound ---------------------------------------------------------------------
def two_code_model():
    """K = 2 codes on a 2x2 grid (8x8 images, downsampling 4), with a prior far from uniform."""
    torch.manual_seed(0)
    data = blobs(8)
    model = create("vqvae", data.spec, **{**TINY, "num_codes": 2, "downsampling": 4}).eval()
    with torch.no_grad():
        for p in model.prior.parameters():
            p.normal_(0, 0.7)
        model.quantizer.embedding.normal_(0, 1)
    return model, data


def test_the_prior_sums_to_one_over_every_code_grid():
    model, _ = two_code_model()
    grids = torch.tensor(list(itertools.product([0, 1], repeat=4))).view(16, 2, 2)
    with torch.no_grad():
        log_p = model.code_log_prob(grids)
    assert log_p.std() > 0.1  # not the uniform 1/16, so the sum is a real check
    assert log_p.logsumexp(0).item() == pytest.approx(0.0, abs=1e-5)


def test_the_bound_is_its_terms_and_below_the_exact_marginal():
    model, data = two_code_model()
    x = data.tensors(4).x
    grids = torch.tensor(list(itertools.product([0, 1], repeat=4))).view(16, 2, 2)
    with torch.no_grad():
        elbo = model.elbo(x)
        codes = model.codes(x)
        decoded = model.likelihood.log_prob(model.decoder_params(model.quantizer.lookup(codes)), x)
        # log p(x) = logsumexp_k log p(k) + log p(x | e_k), over all 16 grids
        decoded_at = [model.likelihood.log_prob(model.decoder_params(model.quantizer.lookup(k.expand(4, 2, 2))), x)
                      for k in grids]
        joint = torch.stack(decoded_at) + model.code_log_prob(grids)[:, None]  # (16, 4)
        bits = model.code_bits(x)
    assert torch.isfinite(elbo).all()
    torch.testing.assert_close(elbo, decoded - bits * math.log(2))
    assert (bits > 0).all() and (elbo <= decoded).all()
    assert (elbo <= joint.logsumexp(0) + 1e-4).all()


def test_cached_sampling_reads_the_same_logits_as_the_parallel_pass():
    torch.manual_seed(0)
    net = CodePriorNetwork(5, 6, width=8, depth=2, heads=2).eval()
    codes = torch.randint(5, (3, 6))
    with torch.inference_mode():
        parallel = net(codes)
        logits, cache = net.begin(3)
        steps = [logits]
        for t in range(5):
            steps.append(net.extend(codes[:, t], cache))
    torch.testing.assert_close(torch.stack(steps, 1), parallel, rtol=1e-5, atol=1e-5)


def test_samples_decode_codes_drawn_from_the_prior():
    model, _ = two_code_model()
    codes = model.sample_codes(64, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (64, 2, 2) and set(codes.unique().tolist()) <= {0, 1}
    x = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 1, 8, 8) and ((0 <= x) & (x <= 1)).all()
    assert {"elbo", "encode", "decode", "reconstruct", "sample", "code_bits", "code_usage"} <= capabilities(model)


# --- training: two stages ---------------------------------------------------------------------------
def test_stage_two_trains_the_prior_and_leaves_stage_one_as_it_was(tmp_path, monkeypatch):
    from dgm.models.vqvae import VQVAE
    from dgm.run import DataConfig, RunConfig, train
    from dgm.train import TrainConfig

    snapshots = {}
    loss = VQVAE.loss

    def recording(self, batch, phase, progress):
        if phase == "prior" and "stage 1" not in snapshots:
            snapshots["stage 1"] = {k: v.clone() for k, v in self.state_dict().items()}
        return loss(self, batch, phase, progress)

    monkeypatch.setattr(VQVAE, "loss", recording)
    torch.manual_seed(0)
    init = {k: v.clone() for k, v in VQVAE(VQVAE.Config(**TINY), blobs().spec).state_dict().items()}
    config = RunConfig("vqvae", dict(TINY), DataConfig("digits", max_examples=64),
                       TrainConfig(epochs=2, batch_size=16, max_steps_per_epoch=2, progress=False, sample_every=0,
                                   device="cpu", lr=1e-2))
    model, _ = train(config, tmp_path / "run")
    after = model.state_dict()
    stage_1 = snapshots["stage 1"]
    first = [k for k in after if not k.startswith("prior.")]
    assert all(torch.equal(after[k], stage_1[k]) for k in first), "stage 2 changed the VQ-VAE"
    assert not all(torch.equal(init[k], stage_1[k]) for k in first if init[k].shape == stage_1[k].shape)
    assert not torch.equal(after["quantizer.cluster_size"], torch.ones(TINY["num_codes"]))  # EMA ran in stage 1
    assert any(not torch.equal(after[k], stage_1[k]) for k in after if k.startswith("prior."))


# --- the rate-distortion metric ---------------------------------------------------------------------
@dataclass
class NoConfig:
    pass


class HalfGrey(GenerativeModel):
    """A stand-in with a known code length (the sum of the pixels, in bits), a reconstruction of 0.5
    everywhere and codes 0 and 1 used once per example of 4."""

    name = "test-half-grey"
    Config = NoConfig

    def reconstruct(self, x):
        return torch.full_like(x, 0.5)

    @capability
    def code_bits(self, x):
        return x.flatten(1).sum(1)

    @capability
    def code_usage(self, x):
        return torch.tensor([len(x), len(x), 0, 0])


def test_rate_distortion_known_answer():
    import dgm

    data = blobs(20)
    model = HalfGrey(NoConfig(), data.spec)
    results = {r.metric: r for r in dgm.evaluate(model, data, ["rate_distortion"], batch_size=7, progress=False)}
    x = data.tensors().x.double()
    mse = (x - 0.5).pow(2).flatten(1).mean(1).mean().item()
    assert results["rate"].value == pytest.approx(x.flatten(1).sum(1).mean().item())
    assert results["rate"].unit == "bits/image"
    assert results["distortion"].value == pytest.approx(mse)
    assert results["psnr"].value == pytest.approx(10 * math.log10(1 / mse))
    assert results["code_perplexity"].value == pytest.approx(2.0)
    assert results["codes_used"].value == 0.5


# --- refusals ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("data, settings, message", [
    (blobs(8), {"num_codes": 1}, "model.num_codes must be"),
    (blobs(8, size=12), {"downsampling": 8}, "does not make a whole code grid"),
    (blobs(8), {"downsampling": 3}, "power of 2"),
    (blobs(8), {"downsampling": 1, "prior_max_length": 16}, "more than the prior takes"),
    (blobs(8), {"prior_width": 10, "prior_heads": 4}, "multiple of model.prior_heads"),
    (vector_dataset(8), {}, "image data"),
])
def test_bad_input_is_refused_in_one_line(data, settings, message):
    with pytest.raises(DgmError, match=message) as refusal:
        create("vqvae", data.spec, **{**TINY, **settings})
    assert "\n" not in str(refusal.value)


def test_non_images_are_refused_before_the_data_is_loaded():
    from dgm.models.vqvae import VQVAE

    with pytest.raises(DgmError, match="image data"):
        VQVAE.default_representation(VQVAE.Config(), vector_dataset(8).spec)


def test_loss_logs_the_stage_metrics():
    data = blobs(16)
    torch.manual_seed(0)
    model = create("vqvae", data.spec, **TINY)
    batch = data.tensors(16)
    first = model.loss(batch, "vqvae", Progress(generator=torch.Generator().manual_seed(0)))
    second = model.loss(batch, "prior", Progress())
    assert set(first.metrics) == {"reconstruction", "commitment", "perplexity", "used_codes"}
    assert 1 <= first.metrics["perplexity"] <= TINY["num_codes"] and 0 < first.metrics["used_codes"] <= 1
    # a near-uniform prior at initialisation: about log2 K bits per position of the 4x4 grid
    assert second.metrics["prior_bits"].item() == pytest.approx(16 * math.log2(TINY["num_codes"]), rel=0.05)


def test_bf16_autocast_keeps_the_codebook_statistics_in_float32():
    data = blobs(16)
    torch.manual_seed(0)
    model = create("vqvae", data.spec, **TINY)
    batch = data.tensors(16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for phase in ("vqvae", "prior"):
            out = model.loss(batch, phase, Progress(generator=torch.Generator().manual_seed(0)))
            assert torch.isfinite(out.loss)
            out.loss.backward()
    assert all(b.dtype == torch.float32 for b in model.quantizer.buffers())
