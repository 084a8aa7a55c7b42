"""Known answers for the self-labelling GAN (Watanabe & Favaro 2021): which real examples the
confidence bound lets take a self-label, known labels over self-labels, the classifier's EMA in
closed form, the critic's class term dropped for unlabelled examples, and training at 0%, some and
100% labels."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import image_dataset
from dgm import DgmError, create
from dgm.data.core import UNLABELLED
from dgm.models import Loss, Progress
from dgm.models.gan import CRITIC
from dgm.models.self_labelling_gan import self_labels

TINY = {"latent_dim": 3, "hidden": (16, 16), "width": 4}
# confidences max_k p: 0.7, 0.5, 0.9, 0.34, 0.61, 0.59 (softmax of log p is p)
PROBS = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.05, 0.9, 0.05],
                      [0.34, 0.33, 0.33], [0.2, 0.19, 0.61], [0.59, 0.4, 0.01]])


def model_on(data, **settings):
    data = data.with_representation("signed")
    torch.manual_seed(0)
    return create("self-labelling-gan", data.spec, **{**TINY, **settings}), data


def test_the_threshold_never_uses_a_label_below_the_confidence_bound():
    labels = self_labels(PROBS.log(), 0.6)
    assert labels.tolist() == [0, UNLABELLED, 1, UNLABELLED, 2, UNLABELLED]
    # every bound: exactly the rows whose confidence exceeds it take their argmax
    for tau in (0.0, 0.33, 0.5, 0.6, 0.65, 0.89, 0.95, 1.0):
        confident = PROBS.max(-1).values > tau
        expected = torch.where(confident, PROBS.argmax(-1), torch.full((6,), UNLABELLED))
        assert torch.equal(self_labels(PROBS.log(), tau), expected), tau


def test_known_labels_override_self_labels():
    y = torch.tensor([2, UNLABELLED, 0, UNLABELLED, 1, 1])
    labelled = torch.tensor([True, False, True, False, True, False])
    labels = self_labels(PROBS.log(), 0.6, y, labelled)
    assert labels.tolist() == [2, UNLABELLED, 0, UNLABELLED, 1, UNLABELLED]
    # every label known (labelled None): the classifier is not consulted at all
    assert torch.equal(self_labels(PROBS.log(), 0.0, y.clamp(min=0), None), y.clamp(min=0))


def test_the_model_labels_real_data_with_its_averaged_classifier():
    model, data = model_on(image_dataset(n=32, labels=False), classes=3, threshold=0.6)
    batch = data.tensors(6)
    # the averaged classifier's last layer: no weight, bias log p, so every example gets p
    last = len(model.classifier) - 1
    model.get_buffer(f"classifier_ema_{last}_weight").zero_()
    model.get_buffer(f"classifier_ema_{last}_bias").copy_(PROBS[0].log())
    torch.testing.assert_close(model.classify_ema(batch.x).softmax(-1), PROBS[0].expand(6, 3))
    assert model.self_labelled(batch).y.tolist() == [0] * 6  # 0.7 > 0.6
    model.config.threshold = 0.75
    assert model.self_labelled(batch).y.tolist() == [UNLABELLED] * 6
    # the online classifier is not the one that labels: it still has its own (random) weights
    assert not torch.equal(model.classifier[last].weight, torch.zeros_like(model.classifier[last].weight))


def test_unlabelled_examples_play_only_the_unconditional_game():
    model, data = model_on(image_dataset(n=32, labels=True), threshold=0.5)
    x = (data.tensors(4).x,)
    y = torch.tensor([1, UNLABELLED, 3, UNLABELLED])
    unconditional, h = model.critic(x, None)
    assert torch.equal(model.critic(x, y)[0], unconditional)  # the game of every example reads no label
    projection = (model.projection(torch.tensor([1, 0, 3, 0])) * h).sum(-1)
    torch.testing.assert_close(model.conditional_score(h, y)[[0, 2]], (unconditional + projection)[[0, 2]])


@pytest.mark.parametrize("kind", ["minimax", "non-saturating", "wasserstein", "least-squares", "hinge"])
def test_the_conditional_game_averages_its_real_term_over_labelled_rows_only(kind):
    from dgm.models.gan import critic_loss
    from dgm.models.self_labelling_gan import conditional_critic_loss

    real = torch.tensor([0.3, -2.0, 1.5, 0.7, -0.1], requires_grad=True)
    fake = torch.tensor([0.2, -0.4, 1.1], requires_grad=True)
    known = torch.tensor([True, False, True, True, False])
    got = conditional_critic_loss(kind, real, known, fake)
    expected = 3 / 5 * critic_loss(kind, real[known], fake)  # rho = 3/5
    torch.testing.assert_close(got, expected)
    grad_got = torch.autograd.grad(got, (real, fake))
    grad_expected = torch.autograd.grad(expected, (real, fake))
    for a, b in zip(grad_got, grad_expected):
        torch.testing.assert_close(a, b)
    assert (grad_got[0][~known] == 0).all()  # no unlabelled real example moves the conditional critic
    nobody = torch.zeros(5, dtype=torch.bool)  # no label in the batch: the conditional game is off
    assert conditional_critic_loss(kind, real, nobody, fake).abs() < 1e-6


def test_the_critic_step_reads_known_labels_and_confident_self_labels(monkeypatch):
    data = image_dataset(n=64, labels=True).with_labelled(4, seed=0)
    model, data = model_on(data, threshold=0.6)
    batch = data.tensors(6)
    logits = torch.cat([PROBS.log(), torch.full((6, 1), -30.0)], 1)  # 4 classes, the last never likely
    monkeypatch.setattr(model, "classify_ema", lambda x: logits)
    seen = model.self_labelled(batch)
    expected = self_labels(logits, 0.6, batch.y, batch.labelled)
    assert torch.equal(seen.y, expected) and seen.labelled is None
    assert model.loss(batch, "critic", Progress()).loss.isfinite()


def test_the_classifier_average_is_an_ema_in_closed_form():
    d = 0.9
    model, data = model_on(image_dataset(n=32, labels=True), classifier_ema=d)
    phase = next(p for p in model.phases() if p.name == CRITIC)  # C trains in the critic's phase
    assert {id(p) for p in model.classifier.parameters()} <= {id(p) for p in phase.parameters}
    before = {n: p.detach().clone() for n, p in model.classifier.named_parameters()}
    for n, p in before.items():  # the average starts at the classifier's initial weights
        assert torch.equal(model.get_buffer(model._ema_buffer(n)), p)
    model.loss(data.tensors(8), CRITIC, Progress(generator=torch.Generator().manual_seed(0))).loss.backward()
    torch.optim.SGD(phase.parameters, lr=0.5).step()
    phase.after_step()
    moved = 0
    for n, p in model.classifier.named_parameters():
        torch.testing.assert_close(model.get_buffer(model._ema_buffer(n)), d * before[n] + (1 - d) * p.detach())
        moved += int(not torch.equal(p, before[n]))
    assert moved  # the step moved the classifier, so the check above is not trivially equal weights


def test_the_classifier_learns_artificial_labels_and_known_real_labels():
    data = image_dataset(n=64, labels=True).with_labelled(8, seed=0)
    model, data = model_on(data)
    batch = data.tensors(16)
    draw = model.draw(16, generator=torch.Generator().manual_seed(3))
    out = model.classifier_objective(batch, draw)
    with torch.no_grad():
        fake_ce = F.cross_entropy(model.classifier(model.generate(draw)), draw.y)
        known = batch.labelled
        real_ce = F.cross_entropy(model.classifier(batch.x[known]), batch.y[known])
    torch.testing.assert_close(out.metrics["classifier_loss"], fake_ce)
    torch.testing.assert_close(out.metrics["real_class_loss"], real_ce)
    torch.testing.assert_close(out.loss, fake_ce + real_ce)
    # the generator's term reaches the generator through C, and C is not a generator parameter
    gen = next(p for p in model.phases() if p.name == "generator")
    assert not {id(p) for p in model.classifier.parameters()} & {id(p) for p in gen.parameters}
    assert "generator_class_loss" in model.loss(batch, "generator", Progress()).metrics
    # the critic's step adds L_C to the game's loss; C's loss reaches none of the critic's weights
    critic_out = model.loss(batch, CRITIC, Progress(generator=torch.Generator().manual_seed(4)))
    assert {"classifier_loss", "real_class_loss", "self_labelled", "value"} <= set(critic_out.metrics)
    model.zero_grad()
    critic_out.metrics["classifier_loss"].backward()
    assert all(p.grad is None for p in model.critic_parameters())


def test_ignore_labels_trains_as_with_no_labels(monkeypatch):
    model, data = model_on(image_dataset(n=32, labels=True), ignore_labels=True, threshold=0.6)
    batch = data.tensors(6)
    logits = torch.cat([PROBS.log(), torch.full((6, 1), -30.0)], 1)
    monkeypatch.setattr(model, "classify_ema", lambda x: logits)
    seen = []
    monkeypatch.setattr(model, "critic_objective", lambda b, d, generator=None: seen.append(b.y) or
                        Loss(torch.zeros(())))
    out = model.loss(batch, CRITIC, Progress())
    assert seen[0].tolist() == self_labels(logits, 0.6).tolist()  # the data's labels were not read
    assert "real_class_loss" not in out.metrics


@pytest.mark.parametrize("labels", ["none", "some", "all"])
def test_it_trains_without_labels_with_some_and_with_all(labels):
    from dgm.train.trainer import TrainConfig, Trainer

    data = image_dataset(n=64, labels=labels != "none")
    if labels == "some":
        data = data.with_labelled(8, seed=0, per_batch=4)
    model, data = model_on(data, **({"classes": 3} if labels == "none" else {}), threshold=0.3)
    rows = Trainer(model, data, TrainConfig(epochs=2, batch_size=16, progress=False, device="cpu")).fit()
    assert rows and all(math.isfinite(v) for r in rows for v in r.values() if isinstance(v, float))
    model.eval()
    k = 3 if labels == "none" else 4
    x = model.sample(k, torch.arange(k), generator=torch.Generator().manual_seed(0))
    assert x.shape == (k, *data.spec.shape) and x.abs().max() <= 1


def test_bad_settings_are_refused_with_what_to_do():
    unlabelled = image_dataset(n=8).with_representation("signed").spec
    with pytest.raises(DgmError, match="model.classes"):
        create("self-labelling-gan", unlabelled, **TINY)
    labelled = image_dataset(n=8, labels=True).with_representation("signed").spec
    with pytest.raises(DgmError, match="model.classes >= 4"):
        create("self-labelling-gan", labelled, **TINY, classes=3)
    with pytest.raises(DgmError, match="conditional=projection"):
        create("self-labelling-gan", labelled, **TINY, conditional="acgan")
    assert create("self-labelling-gan", labelled, **TINY, classes=6).num_classes == 6  # more parts than classes
