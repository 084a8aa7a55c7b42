"""Generative classifiers (dgm.eval.bayes, `dgm classify --via bayes`): Bayes' rule against a closed
form and an enumeration, common random numbers for bounds, calibration by hand, the app end to end."""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from dgm import data
from dgm.cli import main
from dgm.data.core import DataSpec
from dgm.errors import DgmError
from dgm.eval.bayes import (bayes_log_posterior, bayes_probabilities, class_log_likelihoods, class_log_prior,
                            conditional_estimator, expected_calibration_error, true_class_nll)
from dgm.models import create
from dgm.models.base import GenerativeModel, capabilities, capability


@dataclass
class GaussConfig:
    pass


class TwoGaussians(GenerativeModel):
    """p(x | y) = N(x; mu_y, 1) in one dimension, mu = (-1, 2): linear discriminant analysis."""

    name = "test-two-gaussians"
    Config = GaussConfig
    means = torch.tensor([-1.0, 2.0])

    def __init__(self, config: GaussConfig, spec: DataSpec, *, class_condition: bool = True) -> None:
        super().__init__(config, spec)
        self.w = nn.Parameter(torch.zeros(1))
        self.class_condition = class_condition

    @property
    def num_classes(self) -> int | None:
        return self.spec.num_classes if self.class_condition else None

    @capability
    def conditional_log_prob(self, x: Tensor, y: Tensor) -> Tensor:
        return -0.5 * (x[:, 0] - self.means[y]) ** 2 - 0.5 * math.log(2 * math.pi)


def test_bayes_rule_is_the_logistic_of_linear_discriminant_analysis() -> None:
    model = TwoGaussians(GaussConfig(), DataSpec("line", (1,), representation="continuous", levels=None, num_classes=2))
    x = torch.linspace(-4, 4, 41).unsqueeze(1)
    prior = torch.tensor([0.3, 0.7]).log()
    posterior = bayes_log_posterior(class_log_likelihoods(model, x).double(), prior.double()).exp()
    torch.testing.assert_close(posterior.sum(1), torch.ones(41, dtype=torch.float64))
    # p(y=1|x) = sigmoid((mu1 - mu0) x - (mu1^2 - mu0^2) / 2 + log(pi1 / pi0)) for equal variances
    m0, m1 = model.means.double()
    expected = torch.sigmoid((m1 - m0) * x[:, 0].double() - (m1 ** 2 - m0 ** 2) / 2 + math.log(0.7 / 0.3))
    torch.testing.assert_close(posterior[:, 1], expected)
    # the prior is normalised here: an unnormalised one gives the same posterior
    torch.testing.assert_close(bayes_log_posterior(class_log_likelihoods(model, x).double(), prior.double() + 5),
                               posterior.log())


def test_bayes_posterior_of_a_conditional_pixelcnn_matches_the_enumerated_joint() -> None:
    """All 16 binary 2x2 images: p(x|y) sums to one per class, and p(y|x) = p(x,y) / sum_y p(x,y)
    computed directly in probabilities (no log-sum-exp) equals the app's posterior."""
    torch.manual_seed(0)
    spec = DataSpec("tiny", (1, 2, 2), representation="binary-dynamic", levels=2, num_classes=3)
    model = create("pixelcnn", spec, conditional=True, width=8, layers=2).eval()
    assert "conditional_log_prob" in capabilities(model)
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4))).view(16, 1, 2, 2)
    with torch.inference_mode():
        log_lik = class_log_likelihoods(model, images).double()  # (16, 3)
    torch.testing.assert_close(log_lik.exp().sum(0), torch.ones(3, dtype=torch.float64))
    prior = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    joint = log_lik.exp() * prior
    direct = joint / joint.sum(1, keepdim=True)
    posterior = bayes_log_posterior(log_lik, prior.log()).exp()
    torch.testing.assert_close(posterior, direct)
    # the model's marginal log p(x) is the uniform-prior mixture of the same conditionals
    with torch.inference_mode():
        torch.testing.assert_close(model.log_prob(images).double(), log_lik.logsumexp(1) - math.log(3),
                                   atol=1e-5, rtol=1e-5)
    unconditional = create("pixelcnn", spec, width=8, layers=2)
    assert "conditional_log_prob" not in capabilities(unconditional)
    with pytest.raises(DgmError, match="no class-conditional likelihood"):
        conditional_estimator(unconditional)


def test_bounds_are_compared_under_common_random_numbers() -> None:
    """Each class's IWAE bound comes from the same stream: the column of class c is the bound computed
    alone after seeding; the same seed repeats the estimate, another moves it."""
    test = data.load("digits", "test", representation="binary-dynamic").subset(8)
    torch.manual_seed(0)
    model = create("cvae", test.spec, latent_dim=4, hidden=(16,)).eval()
    x = test.tensors().x
    assert conditional_estimator(model, 1) == "conditional_elbo"
    assert conditional_estimator(model, 5) == "conditional_iwae_bound"
    with torch.inference_mode():
        scores = class_log_likelihoods(model, x, k=5, seed=3)
        torch.manual_seed(3)
        alone = model.conditional_iwae_bound(x, torch.full((8,), 7), 5)
        again = class_log_likelihoods(model, x, k=5, seed=3)
        other = class_log_likelihoods(model, x, k=5, seed=4)
    torch.testing.assert_close(scores[:, 7], alone)
    assert torch.equal(scores, again) and not torch.equal(scores, other)


def test_a_model_conditioned_on_captions_or_factors_is_not_a_class_classifier() -> None:
    """The capability names also serve captions (aligndraw) and known factors (the disentangled VAE):
    Bayes' rule over classes refuses a model whose condition is not declared to be the class rather
    than pass class ids as captions."""
    spec = DataSpec("line", (1,), representation="continuous", levels=None, num_classes=2)
    model = TwoGaussians(GaussConfig(), spec, class_condition=False)
    with pytest.raises(DgmError, match="other than the class"):
        conditional_estimator(model)
    assert conditional_estimator(TwoGaussians(GaussConfig(), spec)) == "conditional_log_prob"


def test_the_conditional_ddpm_bound_is_a_capability_only_when_conditional() -> None:
    spec = DataSpec("tiny", (1, 4, 4), representation="signed", num_classes=2)
    torch.manual_seed(0)
    conditional = create("ddpm", spec, conditional=True, timesteps=4, network="mlp", hidden=(16,)).eval()
    assert "conditional_elbo" in capabilities(conditional)
    assert "conditional_elbo" not in capabilities(create("ddpm", spec, timesteps=4, network="mlp", hidden=(16,)))
    with torch.no_grad():  # the class embedding starts at zero: make the classes differ
        for p in conditional.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.rand(3, 1, 4, 4) * 2 - 1
    with torch.inference_mode():
        torch.manual_seed(1)
        bound = conditional.conditional_elbo(x, torch.zeros(3, dtype=torch.long))
        torch.manual_seed(1)
        null = conditional.elbo(x)
        scores = class_log_likelihoods(conditional, x, seed=1)
    assert bound.shape == (3,) and torch.isfinite(bound).all() and not torch.equal(bound, null)
    torch.testing.assert_close(scores[:, 0], bound)


def test_expected_calibration_error_and_nll_by_hand() -> None:
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.4, 0.3, 0.3], [0.3, 0.3, 0.4]])
    labels = torch.tensor([0, 0, 0, 1])
    # 2 bins: (0.5, 1] holds confidences 0.9 (right), 0.7 (wrong): |0.5 - 0.8| = 0.3, weight 2/4;
    # [0, 0.5] holds 0.4 (right), 0.4 (wrong): |0.5 - 0.4| = 0.1, weight 2/4  ->  0.2
    assert expected_calibration_error(probs, labels, bins=2) == pytest.approx(20.0)
    # one bin: |accuracy 0.5 - mean confidence 0.6|
    assert expected_calibration_error(probs, labels, bins=1) == pytest.approx(10.0)
    assert true_class_nll(probs, labels) == pytest.approx(-(math.log(0.9) + math.log(0.2) + math.log(0.4)
                                                            + math.log(0.3)) / 4)
    with pytest.raises(DgmError, match="sum to one"):
        expected_calibration_error(probs * 2, labels)
    with pytest.raises(DgmError, match="at least one bin"):
        expected_calibration_error(probs, labels, bins=0)
    with pytest.raises(DgmError, match="N labels"):
        true_class_nll(probs, labels[:3])


def test_the_prior_is_the_smoothed_training_frequency() -> None:
    torch.testing.assert_close(class_log_prior(torch.tensor([0, 0, 0, 1]), 3).exp(),
                               torch.tensor([4 / 7, 2 / 7, 1 / 7], dtype=torch.float64))


def test_bayes_probabilities_seed_each_batch_apart(tmp_path) -> None:
    test = data.load("digits", "test", representation="binary-dynamic").subset(30)
    torch.manual_seed(0)
    model = create("cvae", test.spec, latent_dim=4, hidden=(16,)).eval()
    prior = torch.zeros(10)
    probs, labels = bayes_probabilities(model, test, prior, k=3, batch_size=10)
    again, _ = bayes_probabilities(model, test, prior, k=3, batch_size=10)
    assert probs.shape == (30, 10) and torch.equal(labels, test.labels) and torch.equal(probs, again)
    torch.testing.assert_close(probs.sum(1), torch.ones(30, dtype=torch.float64))


def test_dgm_classify_via_bayes_scores_a_conditional_vae(tmp_path, capsys) -> None:
    out = tmp_path / "cvae"
    assert main(["train", "cvae", "--data", "digits", "--epochs", "8", "--out", str(out), "--quiet",
                 "--set", "model.latent_dim=4"]) == 0
    capsys.readouterr()
    assert main(["classify", str(out), "--k", "4", "--max-examples", "200", "--quiet"]) == 0
    line = capsys.readouterr().out
    assert "Bayes' rule over the IWAE bound (k=4)" in line and "ece" in line
    results = {r["metric"]: r for r in json.loads((out / "eval.json").read_text())}
    assert 0 <= results["classification_error"]["value"] < 40  # chance is 90%
    assert 0 <= results["classification_ece"]["value"] <= 100 and results["classification_nll"]["value"] > 0
    # a probe and --k together, and Bayes' rule for an unconditional model: one line each, exit 2
    assert main(["classify", str(out), "--via", "probe", "--k", "3", "--quiet"]) == 2
    vae = tmp_path / "vae"
    assert main(["train", "vae", "--data", "digits", "--epochs", "1", "--out", str(vae), "--quiet",
                 "--set", "train.max_steps_per_epoch=2"]) == 0
    assert main(["classify", str(vae), "--via", "bayes", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "use --via bayes" in err[0] and "use --via probe" in err[1]
