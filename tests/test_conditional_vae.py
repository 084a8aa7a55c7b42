"""Known answers for the conditional VAE and the CSVAE: their objectives against hand computations
with torch.distributions on tiny models (same weights, same generator, so the same reparameterised
draws), their samplers against the draws they are made of, and what they refuse."""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Normal, kl_divergence

from conftest import image_dataset
from dgm.data.core import Batch, DataSpec
from dgm.errors import DgmError
from dgm.models import Progress, capabilities, create
from dgm.models.conditional_vae import ADVERSARY, GRID_ROWS, VAE_PHASE

B = 6


def binary_batch(num_classes: int, seed: int = 0) -> tuple[DataSpec, Batch]:
    """A spec of 3x3 binary images with ``num_classes`` classes, and a batch of 6 with every class."""
    g = torch.Generator().manual_seed(seed)
    spec = DataSpec("toy", (1, 3, 3), "binary-static", levels=2, num_classes=num_classes)
    x = torch.bernoulli(torch.full((B, 1, 3, 3), 0.5), generator=g)
    y = torch.arange(B) % num_classes
    return spec, Batch(x, y)


def csvae(spec: DataSpec, **settings):  # noqa: ANN201
    torch.manual_seed(0)
    return create("csvae", spec, latent_dim=2, w_dim=2, hidden=(5,), adversary_hidden=(4,), **settings)


def cvae(spec: DataSpec, **settings):  # noqa: ANN201
    torch.manual_seed(0)
    return create("cvae", spec, latent_dim=2, hidden=(5,), **settings)


def paper_prior(y: torch.Tensor, num_classes: int, w_dim: int) -> Normal:
    """p(w|y) of Klys et al.: N(3, 1) for each coordinate of a present attribute, N(0, 0.1^2) for an
    absent one; the attributes are the one-hot of the class, or the class itself for two classes."""
    present = y[:, None].bool() if num_classes == 2 else torch.eye(num_classes, dtype=torch.bool)[y]
    present = present.repeat_interleave(w_dim, 1)
    return Normal(torch.where(present, 3.0, 0.0), torch.where(present, 1.0, 0.1))


def gaussian(net_out: torch.Tensor) -> Normal:
    mean, log_var = net_out.chunk(2, dim=-1)
    return Normal(mean, (0.5 * log_var).exp())


# --- CSVAE ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_classes", [3, 2])  # one attribute per class; one attribute for two classes
def test_csvae_objective_terms_match_a_hand_computation(num_classes):
    spec, batch = binary_batch(num_classes)
    betas = {"beta1": 2.0, "beta2": 0.5, "beta3": 0.3, "beta4": 1.5}
    model = csvae(spec, **betas)
    out = model.loss(batch, VAE_PHASE, Progress(generator=torch.Generator().manual_seed(3)))

    x, y = batch.x.flatten(1), batch.y
    g = torch.Generator().manual_seed(3)  # the same draws: z's noise first, then w's
    eps_z, eps_w = torch.randn(B, 2, generator=g), torch.randn(B, model.num_attributes * 2, generator=g)
    with torch.no_grad():
        q_z = gaussian(model.encoder(batch.x))  # q(z|x)
        attributes = torch.eye(num_classes)[y] if num_classes > 2 else y[:, None].float()
        q_w = gaussian(model.w_encoder(torch.cat([x, attributes], 1)))  # q(w|x,y)
        z, w = q_z.loc + q_z.scale * eps_z, q_w.loc + q_w.scale * eps_w
        rec = Bernoulli(logits=model.decoder(torch.cat([w, z], 1)).flatten(1)).log_prob(x).sum(1)
        kl_w = kl_divergence(q_w, paper_prior(y, num_classes, 2)).sum(1)
        kl_z = kl_divergence(q_z, Normal(0.0, 1.0)).sum(1)
        log_p_y = math.log(1 / num_classes)
        m1 = 2.0 * rec - 0.5 * kl_w - 0.3 * kl_z + log_p_y
        m2 = 1.5 * -Categorical(logits=model.adversary(z)).entropy()
    expected = {"reconstruction": rec, "kl_w": kl_w, "kl_z": kl_z, "m1": m1, "m2": m2,
                "joint_elbo": rec - kl_w - kl_z + log_p_y}
    for name, value in expected.items():
        torch.testing.assert_close(out.metrics[name], value.mean(), rtol=1e-5, atol=1e-5, msg=name)
    torch.testing.assert_close(out.loss, (m2 - m1).mean(), rtol=1e-5, atol=1e-5)


def test_csvae_adversary_learns_the_label_from_a_fixed_z():
    spec, batch = binary_batch(3)
    model = csvae(spec)
    out = model.loss(batch, ADVERSARY, Progress(generator=torch.Generator().manual_seed(4)))
    eps_z = torch.randn(B, 2, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        q_z = gaussian(model.encoder(batch.x))
        q_y = Categorical(logits=model.adversary(q_z.loc + q_z.scale * eps_z))
    n = q_y.log_prob(batch.y).mean()  # N = E log q_delta(y|z)
    torch.testing.assert_close(out.metrics["n"], n, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, -n, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.metrics["accuracy"], (q_y.probs.argmax(1) == batch.y).float().mean())
    out.loss.backward()  # the adversary's step leaves the encoder alone
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.adversary.parameters())
    vae, adversary = model.phases()
    assert {id(p) for p in adversary.parameters} == {id(p) for p in model.adversary.parameters()}
    assert not {id(p) for p in vae.parameters} & {id(p) for p in adversary.parameters}
    assert len(vae.parameters) + len(adversary.parameters) == len(list(model.parameters()))


def test_csvae_encodes_z_only_and_manipulates_by_setting_the_mean_w_of_the_target():
    spec, batch = binary_batch(3)
    model = csvae(spec).eval()
    assert capabilities(model) == {"sample", "encode", "manipulate"}  # no decode: x needs w as well as z
    target = torch.tensor([2, 0, 1, 1, 2, 0])
    with torch.no_grad():
        z = gaussian(model.encoder(batch.x)).loc
        w = paper_prior(target, 3, 2).loc
        expected = torch.sigmoid(model.decoder(torch.cat([w, z], 1)))
    torch.testing.assert_close(model.encode(batch.x), z)
    torch.testing.assert_close(model.manipulate(batch.x, target), expected)
    torch.testing.assert_close(model.manipulate(batch.x, target, source=batch.y), expected)  # source unused
    with pytest.raises(DgmError, match="classes 0..2"):
        model.manipulate(batch.x, torch.full((B,), 3))


def test_csvae_samples_are_decoded_draws_of_the_prior():
    spec, _ = binary_batch(3)
    model = csvae(spec, sample_mean=True).eval()
    x = model.sample(4, 1, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)  # w ~ p(w|y) first, then z ~ N(0, I)
    prior = paper_prior(torch.ones(4, dtype=torch.long), 3, 2)
    w = prior.loc + prior.scale * torch.randn(4, 6, generator=g)
    z = torch.randn(4, 2, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(x, torch.sigmoid(model.decoder(torch.cat([w, z], 1))))
    with pytest.raises(DgmError, match="classes 0..2"):
        model.sample(2, 5)


def test_the_class_grids_keep_z_along_a_row_and_the_class_along_a_column():
    spec, _ = binary_batch(3)
    for model in (csvae(spec).eval(), cvae(spec).eval()):
        [(title, pictures, columns, caption)] = model.report_figures(generator=torch.Generator().manual_seed(0))
        assert columns == 3 and pictures.shape == (GRID_ROWS * 3, 1, 3, 3) and "each class in turn" in caption
        z = torch.randn(GRID_ROWS, 2, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(pictures[3 * 5 + 2], model.decode_class(z[5:6], torch.tensor([2]))[0])


def test_a_two_class_csvae_has_one_attribute():
    spec, batch = binary_batch(2)
    model = csvae(spec)
    assert model.num_attributes == 1 and model.w_encoder[-1].out_features == 2 * 2
    assert model.decoder[0][0].in_features == 2 + 2  # [w_1, z]


# --- CVAE -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_cvae_loss_is_the_conditional_elbo(beta):
    spec, batch = binary_batch(3)
    model = cvae(spec, beta=beta)
    out = model.loss(batch, "model", Progress(generator=torch.Generator().manual_seed(5)))
    eps = torch.randn(B, 2, generator=torch.Generator().manual_seed(5))
    x, one_hot = batch.x.flatten(1), torch.eye(3)[batch.y]
    with torch.no_grad():
        q = gaussian(model.encoder(torch.cat([x, one_hot], 1)))  # q(z|x,y)
        z = q.loc + q.scale * eps
        rec = Bernoulli(logits=model.decoder(torch.cat([z, one_hot], 1)).flatten(1)).log_prob(x).sum(1)  # log p(x|y,z)
        kl = kl_divergence(q, Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(out.metrics["conditional_elbo"], (rec - kl).mean(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, (-rec + beta * kl).mean(), rtol=1e-5, atol=1e-5)
    assert "elbo" not in out.metrics  # a bound on log p(x|y), named so

    # the evaluation bound with one importance sample is the same quantity (log p(z) - log q(z) for the KL)
    with torch.no_grad():
        one = model.conditional_iwae_bound(batch.x, batch.y, 1, generator=torch.Generator().manual_seed(5))
        log_w = rec + Normal(0.0, 1.0).log_prob(z).sum(1) - q.log_prob(z).sum(1)
    torch.testing.assert_close(one, log_w, rtol=1e-5, atol=1e-5)


def test_cvae_offers_bounds_on_log_p_x_given_y_only_under_their_own_names():
    have = capabilities(cvae(binary_batch(3)[0]))
    assert {"sample", "manipulate", "conditional_elbo", "conditional_iwae_bound"} <= have
    assert not have & {"elbo", "iwae_bound", "kl_per_dim", "encode", "decode", "reconstruct", "log_prob"}


def test_cvae_manipulates_with_the_source_class_and_asks_for_it():
    spec, batch = binary_batch(3)
    model = cvae(spec).eval()
    target = torch.tensor([1, 2, 0, 0, 1, 2])
    with pytest.raises(DgmError, match="--source"):
        model.manipulate(batch.x, target)
    with torch.no_grad():
        mu = gaussian(model.encoder(torch.cat([batch.x.flatten(1), torch.eye(3)[batch.y]], 1))).loc
        expected = torch.sigmoid(model.decoder(torch.cat([mu, torch.eye(3)[target]], 1)))
    torch.testing.assert_close(model.manipulate(batch.x, target, source=batch.y), expected)


def test_cvae_samples_decode_prior_codes_with_the_asked_class():
    spec, _ = binary_batch(3)
    model = cvae(spec).eval()
    x = model.sample(4, torch.tensor([0, 1, 2, 1]), generator=torch.Generator().manual_seed(2))
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(x, torch.sigmoid(model.decoder(torch.cat([z, torch.eye(3)[[0, 1, 2, 1]]], 1))))
    drawn = model.sample(200, generator=torch.Generator().manual_seed(2))  # classes uniform over the three
    assert drawn.shape == (200, 1, 3, 3)


# --- what they refuse -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cvae", "csvae"])
def test_labelled_models_refuse_unlabelled_and_partly_labelled_data(name):
    unlabelled = image_dataset(n=16, representation="binary-static").spec
    with pytest.raises(DgmError, match=f"model '{name}' learns from class labels, and 'blobs' has none"):
        create(name, unlabelled, latent_dim=2, hidden=(4,))
    data = image_dataset(n=32, representation="binary-static", labels=True).with_labelled(8, seed=0)
    model = create(name, data.spec, latent_dim=2, hidden=(4,))
    phase = model.phases()[0].name
    with pytest.raises(DgmError, match="needs the label of every training example"):
        model.loss(data.tensors(16), phase, Progress())


def test_cvae_refuses_what_it_does_not_do():
    spec = binary_batch(3)[0]
    with pytest.raises(DgmError, match="network=mlp"):
        create("cvae", spec, network="conv")
    with pytest.raises(DgmError, match="iwae_k=1"):
        create("cvae", spec, iwae_k=4)
