"""Known answers for the semi-supervised models (M2, M1+M2, the partially supervised VAE): M2's
unlabelled bound against its labelled bound class by class, the batch loss against its terms
combined by hand, the bounds against log p(x) by quadrature on 2x2 binary images, the partially
supervised VAE's importance-sampled estimates against hand computations, M1+M2's two stages, and a
quick learning check on digits."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import image_dataset
from dgm.data.core import Batch, DataSpec, UNLABELLED
from dgm.errors import DgmError
from dgm.models import Progress, capabilities, create
from dgm.nn.distributions import normal_log_prob
from dgm.train.trainer import TrainConfig, Trainer

TINY = {"m2": {"latent_dim": 3, "hidden": (16,)},
        "ps-vae": {"latent_dim": 3, "hidden": (16,), "samples": 3},
        "m1m2": {"latent_dim": 2, "hidden": (8,), "m1_latent_dim": 3, "m1_hidden": (16,), "m1_epochs": 1}}
#: every image of 2x2 binary pixels: a pmf over these sums to 1
PIXELS = DataSpec("pixels", (1, 2, 2), "binary-static", levels=2, num_classes=2)
ALL_IMAGES = ((torch.arange(16)[:, None] >> torch.arange(4)) & 1).double().view(16, 1, 2, 2)


def blobs(name: str, n: int = 16, dtype: torch.dtype = torch.float64):
    """A tiny model and a batch of n labelled 8x8 binary blobs (4 classes), in ``dtype``."""
    torch.manual_seed(0)
    data = image_dataset(n=n, labels=True).with_representation("binary-static")
    model = create(name, data.spec, **TINY[name]).to(dtype)
    batch = data.tensors(n)
    return model, Batch(batch.x.to(dtype), batch.y)


def seeded(seed: int = 3) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- M2: eq. 6 by hand, and eq. 7 against eq. 6 class by class ------------------------------------
def test_m2_labelled_bound_is_eq_6_by_hand():
    """-L(x, y) = log p(x|y,z) + log p(y) - KL(q(z|x,y) || N(0, I)) with z = mu + sigma eps."""
    model, batch = blobs("m2")
    x, y = batch.x, batch.y
    mu, logvar = model.posterior(x, y)
    eps = torch.randn(mu.shape, generator=seeded(), dtype=mu.dtype)
    logits = model.decoder(torch.cat([mu + eps * (0.5 * logvar).exp(), F.one_hot(y, 4).double()], -1))
    log_px = (x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)).flatten(1).sum(1)
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1)
    expected = log_px - math.log(4) - kl
    torch.testing.assert_close(model.labelled_bound(x, y, generator=seeded()), expected)


def test_m2_unlabelled_bound_is_expected_labelled_bound_plus_entropy():
    """-U(x) = sum_y q(y|x) (-L(x, y)) + H(q(y|x)) (eq. 7): the vectorised U over all classes at once
    against a loop over the classes with the labelled bound, the noise of z the same for each."""
    model, batch = blobs("m2")
    x = batch.x
    with torch.no_grad():  # classify's probabilities are inference tensors
        per_class = torch.stack([model.labelled_bound(x, torch.full((len(x),), k), generator=seeded())
                                 for k in range(4)], 1)  # (B, K), each class from the same noise
    q = model.classify(x)
    assert torch.allclose(q.sum(1), torch.ones(len(x), dtype=q.dtype))
    expected = (q * per_class).sum(1) - (q * q.log()).sum(1)
    torch.testing.assert_close(model.unlabelled_bound(x, generator=seeded()), expected)
    torch.testing.assert_close(model.class_bounds(x, seeded()), per_class)
    # a bound on log p(x) is above each class's bound on log p(x, y) only through the entropy
    assert (model.unlabelled_bound(x, generator=seeded()) <= per_class.max(1).values + math.log(4) + 1e-9).all()


# --- the loss: labelled and unlabelled rows masked and combined ------------------------------------
@pytest.mark.parametrize("name", ["m2", "ps-vae"])
def test_batch_loss_combines_the_labelled_and_unlabelled_rows_as_by_hand(name):
    model, batch = blobs(name)
    known = torch.arange(16) % 3 == 0  # rows 0, 3, ..., 15 labelled
    y = torch.where(known, batch.y, UNLABELLED)
    out = model.loss(Batch(batch.x, y, known), "model", Progress(generator=seeded()))
    t = model.bounds(batch.x, batch.y.clamp(min=0) * known, seeded())  # the same noise; any class where unknown
    log_q_y = t.class_log_probs[known, batch.y[known]]
    expected = -torch.cat([t.labelled[known], t.unlabelled[~known]]).mean() + model.config.alpha * -log_q_y.mean()
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.metrics["classification"], -log_q_y.mean())
    torch.testing.assert_close(out.metrics["labelled_bound"], t.labelled[known].mean())
    # what an unknown row's label holds does not matter (it is never read as a class)
    garbage = torch.where(known, batch.y, 3)
    again = model.loss(Batch(batch.x, garbage, known), "model", Progress(generator=seeded()))
    torch.testing.assert_close(again.loss, out.loss)
    # labelled=None means every label is known
    every = model.loss(Batch(batch.x, batch.y, None), "model", Progress(generator=seeded()))
    forced = model.loss(Batch(batch.x, batch.y, torch.ones(16, dtype=torch.bool)), "model", Progress(generator=seeded()))
    torch.testing.assert_close(every.loss, forced.loss)


@pytest.mark.parametrize("name", ["m2", "ps-vae", "m1m2"])
def test_a_batch_without_labels_gives_a_finite_loss_with_no_classification_term(name):
    model, batch = blobs(name)
    none = torch.zeros(16, dtype=torch.bool)
    phase = model.phases()[-1].name
    out = model.loss(Batch(batch.x, torch.full((16,), UNLABELLED), none), phase, Progress(generator=seeded()))
    assert torch.isfinite(out.loss)
    assert out.metrics["classification"] == 0 and out.metrics["accuracy"] == 0
    torch.testing.assert_close(out.loss, -out.metrics["unlabelled_bound"])
    out.loss.backward()
    assert model.classifier[0].weight.grad.abs().sum() > 0  # U(x) alone still teaches q(y|x)


# --- bounds against log p(x) by quadrature, on every 2x2 binary image ----------------------------
def grid(lim: float = 8.0, n: int = 1601) -> tuple[torch.Tensor, float]:
    """Quadrature nodes over [-lim, lim] ((n, 1), float64) and the log of their spacing."""
    return torch.linspace(-lim, lim, n, dtype=torch.float64)[:, None], math.log(2 * lim / (n - 1))


def log_prior_weights(z: torch.Tensor, log_dz: float) -> torch.Tensor:
    return normal_log_prob(z).sum(-1) + log_dz  # (n,): log N(z) dz


def exact_log_px(model, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log sum_y p(y) int p(x|y,z) N(z) dz of a model with a 1-d z, by quadrature, ``(B,)``."""
    z, log_dz = grid()
    n, B, K = len(z), len(x), model.num_classes
    per_class = []
    for k in range(K):
        params = model.decoder_params(z, torch.full((n,), k))  # (n, *params_shape)
        log_px_z = model.likelihood.log_prob(params.repeat(B, *[1] * (params.dim() - 1)),
                                             x.repeat_interleave(n, 0)).view(B, n)
        per_class.append((log_px_z + log_prior_weights(z, log_dz)).logsumexp(1) - math.log(K))
    return torch.stack(per_class, 1).logsumexp(1)


def exact_log_px_m1m2(model, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log int p(x|z1) p(z1) dz1 with p(z1) = sum_y p(y) int p(z1|y,z2) N(z2) dz2, both
    1-d, by quadrature, ``(B,)``."""
    z1, log_dz1 = grid(6.0, 801)
    z2, log_dz2 = grid(6.0, 801)
    K = model.num_classes
    log_pz1 = []
    for k in range(K):
        mean, log_s = model.likelihood.loc_scale(model.decoder_params(z2, torch.full((len(z2),), k)))  # (n2, 1)
        log_p = normal_log_prob(z1[:, None, 0], mean[None, :, 0], 2 * log_s[None, :, 0])  # (n1, n2)
        log_pz1.append((log_p + log_prior_weights(z2, log_dz2)).logsumexp(1) - math.log(K))
    log_pz1 = torch.stack(log_pz1, 1).logsumexp(1)  # (n1,)
    assert abs(log_pz1.exp().sum() * math.exp(log_dz1) - 1) < 1e-3  # p(z1) integrates to 1
    B, n = len(x), len(z1)
    log_px_z1 = model.m1.log_likelihood(x.repeat_interleave(n, 0), z1.repeat(B, 1)).view(B, n)
    return (log_px_z1 + log_pz1 + log_dz1).logsumexp(1)


@pytest.mark.parametrize("name", ["m2", "ps-vae", "m1m2"])
def test_elbo_and_iwae_bound_log_p_x_computed_by_quadrature(name):
    """On the 16 images of 2x2 binary pixels with 1-d latents, log p(x) is a quadrature: it sums to
    1 over the images, the ELBO (y summed out, averaged over many draws) lies below it, and the
    importance-weighted bound with many samples lies between the two, close to log p(x)."""
    torch.manual_seed(0)
    settings = {"latent_dim": 1, "hidden": (8,)}
    if name == "m1m2":
        settings.update(m1_latent_dim=1, m1_hidden=(8,))
    model = create(name, PIXELS, **settings).double().eval()
    exact = (exact_log_px_m1m2 if name == "m1m2" else exact_log_px)(model, ALL_IMAGES)
    assert abs(exact.exp().sum() - 1) < 1e-4  # a pmf over the 16 images
    R = 2000
    with torch.no_grad():
        torch.manual_seed(1)
        draws = model.elbo(ALL_IMAGES.repeat(R, 1, 1, 1)).view(R, 16)
        iwae = model.iwae_bound(ALL_IMAGES, 4000, generator=seeded())
    elbo, se = draws.mean(0), draws.std(0) / math.sqrt(R)
    assert (elbo <= exact + 4 * se).all(), (elbo - exact)
    assert elbo.exp().sum() <= 1
    assert (elbo < exact - 1e-3).any()  # a real gap: q is not the posterior
    # each L_k is one noisy draw, below log p(x) in expectation: their mean over the images is
    assert (iwae - exact).mean() <= 0.01 and (iwae - exact).abs().max() < 0.1, iwae - exact
    assert (iwae >= elbo - 4 * se - 0.02).all(), (iwae - exact, elbo - exact)


# --- the partially supervised VAE's importance sampling ----------------------------------------------
def test_ps_vae_class_posterior_estimate_converges_to_its_expectation():
    """q(y|x) ~ 1/S sum_s q(y|x, z^s), z^s ~ q(z|x) (eq. 5) against E_q(z|x)[q(y|x,z)] from
    another 200000 draws."""
    model, batch = blobs("ps-vae")
    x = batch.x[:4]
    model.config.samples = 50000
    with torch.no_grad():
        estimate = model.bounds(x, batch.y[:4], seeded(1)).class_log_probs.exp()
        mu, logvar = model.posterior(x)
        z = mu + torch.randn(200000, *mu.shape, generator=seeded(2), dtype=mu.dtype) * (0.5 * logvar).exp()
        rows = x.repeat(200000, 1, 1, 1)  # sample-major, as z.flatten(0, 1)
        reference = model.class_log_probs_given(rows, z.flatten(0, 1)).exp().view(200000, 4, -1).mean(0)
    torch.testing.assert_close(estimate.sum(1), torch.ones(4, dtype=estimate.dtype))
    assert (estimate - reference).abs().max() < 0.01
    assert (model.classify(x) - reference).abs().max() < 0.3  # the plug-in at the mean of z is near it


def test_ps_vae_supervised_objective_matches_a_hand_computation_from_the_same_samples():
    """L_sup's bound part (eqs. 4-6) with S = 3 from the z^s the model draws, recomputed by hand."""
    model, batch = blobs("ps-vae")
    x, y = batch.x, batch.y
    S, B = 3, len(x)
    mu, logvar = model.posterior(x)
    z = mu + torch.randn((S, *mu.shape), generator=seeded(), dtype=mu.dtype) * (0.5 * logvar).exp()  # (S, B, d)
    log_q_y_z = torch.stack([model.classifier(torch.cat([x.flatten(1), z[s]], 1)).log_softmax(1) for s in range(S)])
    log_w = log_q_y_z[:, torch.arange(B), y]  # log q(y|x, z^s), (S, B)
    logits = torch.stack([model.decoder(torch.cat([z[s], F.one_hot(y, 4).double()], 1)) for s in range(S)])
    log_px = (x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)).flatten(2).sum(2)  # (S, B)
    log_pz = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(2)
    log_qz = (-0.5 * (z - mu) ** 2 / logvar.exp() - 0.5 * logvar - 0.5 * math.log(2 * math.pi)).sum(2)
    log_ratio = log_px - math.log(4) + log_pz - log_qz - log_w  # log p(x, y, z^s) / q(y, z^s | x)
    w = log_w.exp()
    q_y = w.mean(0)  # eq. 5
    expected = (w / w.sum(0) * log_ratio).sum(0) + q_y.log()  # eq. 6, plus the "1" of (1 + alpha) log q(y|x)
    t = model.bounds(x, y, seeded())
    torch.testing.assert_close(t.labelled, expected)
    torch.testing.assert_close(t.class_log_probs[torch.arange(B), y], q_y.log())
    # the unsupervised term sums y out under q(y|x, z^1), with the analytic KL of z
    per_class = torch.stack([model.log_likelihood(x, torch.full((B,), k), z[0]) for k in range(4)], 1) - math.log(4)
    q = log_q_y_z[0].exp()
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1)
    torch.testing.assert_close(t.unlabelled, (q * (per_class - q.log())).sum(1) - kl)


# --- M1+M2: two stages ---------------------------------------------------------------------------
def test_m1m2_trains_m1_then_m2_on_its_codes_leaving_m1_as_its_stage_left_it():
    data = image_dataset(n=64, labels=True).with_labelled(8, 0, per_batch=8).with_representation("binary-dynamic")
    torch.manual_seed(0)
    model = create("m1m2", data.spec, **TINY["m1m2"])
    stages = model.stages()
    assert [s.name for s in stages] == ["m1", "m2"] and [s.epochs for s in stages] == [1, None]
    m1 = {id(p) for p in model.m1.parameters()}
    assert {id(p) for p in stages[0].phases[0].parameters} == m1
    assert not m1 & {id(p) for p in stages[1].phases[0].parameters}
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    snapshots = {}

    class Snapshot:
        def on_epoch_end(self, trainer, epoch):
            snapshots[epoch] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    config = TrainConfig(epochs=3, batch_size=16, max_steps_per_epoch=3, device="cpu", progress=False,
                         sample_every=0, log_every=1, checkpoint_minutes=0)
    rows = Trainer(model, data, config, callbacks=[Snapshot()]).fit()
    assert {k for r in rows for k in r if k.startswith("m1/")} and {k for r in rows for k in r if k.startswith("m2/")}
    after_m1, final = snapshots[0], model.state_dict()
    for key in initial:
        if key.startswith("m1."):
            assert not torch.equal(initial[key], after_m1[key]), key  # stage m1 trains M1
            assert torch.equal(after_m1[key], final[key]), key  # stage m2 leaves it alone
        else:
            assert torch.equal(initial[key], after_m1[key]), key  # M2 waits for its stage
    assert any(not torch.equal(after_m1[k], final[k]) for k in final if not k.startswith("m1."))
    assert all(p.requires_grad for p in model.parameters())  # the trainer gives the flags back


def test_m1m2_classifies_and_manipulates_through_m1():
    model, batch = blobs("m1m2")
    x = batch.x[:5]
    torch.testing.assert_close(model.classify(x), model.class_log_probs(model.m1.encode(x)).exp())
    out = model.manipulate(x, torch.tensor([0, 1, 2, 3, 0]))
    assert out.shape == x.shape and ((0 <= out) & (out <= 1)).all()  # M1's decoder mean


# --- capabilities, sampling, refusals ------------------------------------------------------------
@pytest.mark.parametrize("name", ["m2", "ps-vae", "m1m2"])
def test_capabilities_and_class_conditional_sampling(name):
    model, batch = blobs(name, dtype=torch.float32)  # sample draws z in float32
    assert {"classify", "manipulate", "elbo", "iwae_bound", "encode", "sample"} <= capabilities(model)
    assert "decode" not in capabilities(model)
    x = batch.x[:4]
    assert model.classify(x).shape == (4, 4) and model.encode(x).shape == (4, TINY[name]["latent_dim"])
    # manipulate keeps z: with the class it had, it is the decoder mean at the code
    y = model.classify(x).argmax(1)
    torch.testing.assert_close(model.manipulate(x, y), model.manipulate(x, y, source=y))
    g = seeded
    torch.testing.assert_close(model.sample(6, 2, generator=g()), model.sample(6, torch.full((6,), 2), generator=g()))
    assert not torch.equal(model.sample(6, 2, generator=g()), model.sample(6, 3, generator=g()))
    figures = model.report_figures(generator=g())
    assert [title.split(":")[0] for title, *_ in figures] == ["Analogies", "Class-conditional samples"]
    assert figures[0][1].shape == (8 * 4, 1, 8, 8) and figures[0][2] == 4
    with pytest.raises(DgmError, match="classes 0..3"):
        model.sample(2, 4)
    with pytest.raises(DgmError, match="classes 0..3"):
        model.manipulate(x, torch.tensor([0, 1, 2, 7]))


@pytest.mark.parametrize("name", ["m2", "ps-vae", "m1m2"])
def test_data_without_labels_is_refused_in_one_line(name):
    spec = image_dataset(n=8).spec  # no labels
    from dgm.models import model_class

    for build in (lambda: create(name, spec), lambda: model_class(name).default_representation(
            model_class(name).Config(), spec)):
        with pytest.raises(DgmError, match=f"model '{name}' learns from class labels, and 'blobs' has none") as e:
            build()
        assert "\n" not in str(e.value)


def test_the_vae_settings_m2_does_not_take_are_refused_and_given_to_m1_in_m1m2():
    spec = image_dataset(n=8, labels=True).with_representation("binary-dynamic").spec
    with pytest.raises(DgmError, match="model.beta"):
        create("m2", spec, beta=2.0)
    model = create("m1m2", spec, **TINY["m1m2"], beta=2.0, network="conv", width=4)
    assert model.m1.config.beta == 2.0 and model.m1.config.network == "conv"
    assert model.m1.config.latent_dim == 3 and model.config.latent_dim == 2


# --- learning ------------------------------------------------------------------------------------
def test_m2_learns_to_classify_digits_from_100_labels():
    """A few seconds of M2 on digits with 100 labels (10 per class): test accuracy far above the
    10% of chance, and class-conditional samples that its own classifier reads as their class."""
    from dgm import data as dgm_data

    train = dgm_data.load("digits", "train", representation="binary-dynamic").with_labelled(100, 0, per_batch=64)
    test = dgm_data.load("digits", "test", representation="binary-dynamic").tensors()
    torch.manual_seed(0)
    model = create("m2", train.spec, latent_dim=8, hidden=(128,))
    config = TrainConfig(epochs=15, batch_size=64, device="cpu", progress=False, sample_every=0, log_every=50,
                         checkpoint_minutes=0)
    Trainer(model, train, config).fit()
    model.eval()
    accuracy = (model.classify(test.x).argmax(1) == test.y).float().mean()
    assert accuracy > 0.6, accuracy
    y = torch.arange(10).repeat_interleave(10)
    agreement = (model.classify(model.sample(100, y, generator=seeded())).argmax(1) == y).float().mean()
    assert agreement > 0.6, agreement
