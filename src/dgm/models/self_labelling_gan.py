"""The self-labelling GAN: one training scheme for no labels, some labels, or all labels.

Watanabe & Favaro 2021, "A Unified Generative Adversarial Network Training via Self-Labeling and
Self-Attention", ICML, arXiv:2106.09914. A class-conditional GAN whose classes need not be given:

* **Artificial labels.** The generator draws its class from a partition of its input into K parts,
  y_g ~ U{0..K-1}, and x_g = G(z, y_g) carries y_g as its label. K is the data's number of
  classes, or any ``classes`` setting on data without labels: the scheme relies on a generator
  mapping one part of its input to semantically similar data more easily than across parts.
* **Self-labelling.** A classifier C learns the artificial labels of generated data,

      L_C = E_{z, y_g}[-log C(y_g | G(z, y_g))]  (+ E_{(x, y) labelled}[-log C(y | x)])

  where the second term, on the real examples whose label is known, ties the artificial class k to
  the real class k ("incorporate manually defined labels ... and induce an alignment", abstract).
  An exponential moving average of C's weights, theta_ema <- d theta_ema + (1 - d) theta after each
  classifier step, labels real data: y_hat(x) = argmax_k C_ema(k | x).
* **Self-attention.** Early self-labels are mostly wrong, so a real example takes its self-label
  only where the averaged classifier is confident, max_k C_ema(k | x) > tau; below the bound it
  stays unlabelled and the critic judges it unconditionally. A known label overrides
  the self-label; with every label known the scheme is a class-conditional GAN.

The critic has an unconditional score and a projection score (Miyato & Koyama 2018,
arXiv:1802.05637, eq. 3) on the same features phi:

    s_u(x) = psi(phi(x)),    s_c(x, y) = psi(phi(x)) + embed(y) . phi(x)

and plays two games at once: the unconditional one, s_u on every real and generated example, and
the conditional one, s_c on the *labelled* real examples (known or confident) against every
generated (G(z, y_g), y_g). An unlabelled real example thus uses only the unconditional part of
the critic. The conditional game is weighted by rho, the share of the batch's real examples that
carry a label, so it is off while the classifier is unsure of everything (then the model is a
plain GAN) and it becomes a class-conditional GAN's game (plus the unconditional one) at 100%:

    L_D = l_D(s_u(x), s_u(x_g)) + rho [E_{x labelled} l_D^real(s_c(x, y)) + E l_D^fake(s_c(x_g, y_g))]
    L_G = l_G(s_u(x_g)) + rho l_G(s_c(x_g, y_g)) + lambda E[-log C(y_g | x_g)]

with l_D, l_G the game's losses (:func:`~dgm.models.gan.critic_loss`), whose real and generated
terms are separate means, so the masked mean over labelled rows needs no host synchronisation
(:func:`conditional_critic_loss`). R1 and the gradient penalty act on s_u.

``classifier_weight`` (lambda; 0: off) is the weight of E[-log C(y_g | G(z, y_g))] in the generator's
loss (only the generator's weights move on it), which pushes the parts of the partition apart as InfoGAN's
mutual-information term does for its codes. (Only the paper's abstract was at hand when this was
written: the equations above are this module's reading of it, without the paper's numbers.)

Layout: :class:`SelfLabellingGAN` is :class:`~dgm.models.gan.GAN` with ``conditional=projection``
plus the classifier C, trained in the critic's phase (its own loss, its own weights; the EMA copy
lives in buffers, updated after each critic step), and the self-labelled batch handed to the critic.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from dgm.data.core import UNLABELLED, Batch, DataSpec
from dgm.errors import DgmError
from dgm.models.base import Loss, Phase, Progress, register
from dgm.models.gan import CRITIC, GAN, Draw, GANConfig, critic_loss, generator_loss
from dgm.settings import Decay, Fraction, NonNegativeFloat, PositiveInt


@dataclass
class SelfLabellingGANConfig(GANConfig):
    """:class:`~dgm.models.gan.GANConfig` (projection critic) plus the self-labelling settings."""

    conditional: Literal["none", "projection", "acgan"] = "projection"  # the critic's class term: projection only here
    classes: PositiveInt | None = None  # K artificial classes; None: the data's number of classes (needed without labels)
    threshold: Fraction = 0.9  # tau: a real example takes its self-label only where max_k C_ema(k|x) > tau (1: never)
    classifier_ema: Decay = 0.999  # d: EMA decay of the classifier that labels real data
    # lambda of the generator's term E[-log C(y_g | G(z, y_g))] (0: off). It helps with some labels and
    # hurts with none (an arbitrary split of the output): docs/benchmarks.md, so set 0 at 0% labels
    classifier_weight: NonNegativeFloat = 1.0
    ignore_labels: bool = False  # train as with 0% labels on labelled data (K: classes, else the data's classes)


def self_labels(logits: Tensor, tau: float, y: Tensor | None = None, labelled: Tensor | None = None) -> Tensor:
    """The labels the critic reads for real examples ``(B,)``: the known label where there is one
    (``y`` with ``labelled``, or every ``y`` when ``labelled`` is None), else argmax_k of the
    averaged classifier's ``logits (B, K)`` where its confidence max_k softmax exceeds ``tau``, else
    :data:`~dgm.data.core.UNLABELLED` (-1)."""
    confidence, guess = logits.float().softmax(-1).max(-1)  # (B,), (B,)
    labels = torch.where(confidence > tau, guess, torch.full_like(guess, UNLABELLED))
    if y is not None:
        known = torch.ones_like(y, dtype=torch.bool) if labelled is None else labelled
        labels = torch.where(known, y, labels)
    return labels


#: per game, the (real, generated) score at which an example's term of the critic's loss is 0 with
#: zero gradient: what stands in for the unlabelled rows in :func:`conditional_critic_loss`
NEUTRAL_SCORES = {"minimax": (1e4, -1e4), "non-saturating": (1e4, -1e4), "hinge": (1e4, -1e4),
                  "least-squares": (1.0, 0.0), "wasserstein": (0.0, 0.0)}


def conditional_critic_loss(kind: str, real: Tensor, known: Tensor, fake: Tensor) -> Tensor:
    """rho times the critic's loss of the conditional game: its real term averaged over the
    ``known`` rows of ``real (B,)`` only, its generated term over all of ``fake (B',)``, and rho =
    the share of known rows. Equal to ``rho * critic_loss(kind, real[known], fake)`` (zero without a
    known row), computed by standing neutral scores in for the other rows: no host synchronisation."""
    neutral_real, neutral_fake = NEUTRAL_SCORES[kind]
    rho = known.float().mean()
    # (1/B) sum_known l_real(r_i) = rho * (mean over the known rows)
    real_term = critic_loss(kind, torch.where(known, real, torch.full_like(real, neutral_real)),
                            torch.full_like(fake, neutral_fake))
    return real_term + rho * critic_loss(kind, torch.full_like(real, neutral_real), fake)


@register
class SelfLabellingGAN(GAN):
    """Self-labelling GAN (Watanabe & Favaro 2021): artificial labels from the generator's class
    partition, a classifier of generated data whose EMA labels the real data, and a confidence
    threshold below which a real example stays unlabelled (module docstring).

    Example:
        >>> data = dgm.data.load("fashion-mnist").with_labelled(100, seed=0)
        >>> model = dgm.create("self-labelling-gan", data.spec, threshold=0.95)
    """

    name = "self-labelling-gan"
    Config = SelfLabellingGANConfig
    description = "self-labelling GAN: artificial labels, EMA classifier, confidence threshold (Watanabe & Favaro 2021)"

    def __init__(self, config: SelfLabellingGANConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        features = self.data_features()  # the critic's kind of network, for one example at a time
        self.classifier = nn.Sequential(features, nn.Linear(features.out_features, self.num_classes))
        # the average lives in buffers: saved with the model, never a parameter that an optimiser moves
        self.ema_names = [name for name, _ in self.classifier.named_parameters()]
        for name, p in self.classifier.named_parameters():
            self.register_buffer(self._ema_buffer(name), p.detach().clone())

    @staticmethod
    def _ema_buffer(name: str) -> str:
        return "classifier_ema_" + name.replace(".", "_")

    @staticmethod
    def _check(c: SelfLabellingGANConfig, spec: DataSpec) -> None:
        if c.conditional != "projection":
            raise DgmError("the self-labelling GAN reads its labels through a projection critic: set "
                           "model.conditional=projection (or train 'acgan' for an auxiliary classifier)")
        if c.pack > 1:
            raise DgmError("packing (model.pack > 1) cannot be combined with a class-conditional critic: set model.pack=1")
        if spec.num_classes is None and c.classes is None:
            raise DgmError(f"{spec.name!r} has no labels: set the number of artificial classes, e.g. "
                           "--set model.classes=10")
        if spec.num_classes and c.classes is not None and c.classes < spec.num_classes:
            raise DgmError(f"model.classes={c.classes} is fewer than the data's {spec.num_classes} classes, "
                           f"which map to the first artificial ones: set model.classes >= {spec.num_classes}")
        GAN._check(dataclasses.replace(c, conditional="none"), spec)  # the checks that do not involve labels

    @property
    def num_classes(self) -> int:
        return self.config.classes or self.spec.num_classes

    # --- the classifier and its average ---------------------------------------------------------------
    def classify_ema(self, x: Tensor) -> Tensor:
        """Logits ``(B, K)`` of the averaged classifier C_ema (no gradient)."""
        weights = {name: getattr(self, self._ema_buffer(name)) for name in self.ema_names}
        with torch.no_grad():
            return functional_call(self.classifier, weights, (x.float(),)).float()

    @torch.no_grad()
    def update_classifier_ema(self) -> None:
        """theta_ema <- d theta_ema + (1 - d) theta, after each classifier step."""
        d = self.config.classifier_ema
        for name, p in self.classifier.named_parameters():
            getattr(self, self._ema_buffer(name)).lerp_(p.detach(), 1 - d)

    def generator_parameters(self) -> list[nn.Parameter]:  # C is a player of its own
        classifier = {id(p) for p in self.classifier.parameters()}
        return [p for p in super().generator_parameters() if id(p) not in classifier]

    def phases(self) -> list[Phase]:
        # C trains in the critic's phase (its loss reaches only its own weights), so the game keeps
        # the critic and generator steps per epoch of the plain GAN at one more (gradient-free) G(z, y_g)
        critic, generator = super().phases()
        critic.parameters = critic.parameters + list(self.classifier.parameters())
        critic.after_step = self.after_critic_step
        return [critic, generator]

    def after_critic_step(self) -> None:
        if self.config.weight_clip is not None:  # WGAN's clipping, of the critic alone
            self.clip_critic_weights()
        self.update_classifier_ema()

    # --- training -------------------------------------------------------------------------------------
    def critic(self, inputs: tuple[Tensor, ...], y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The unconditional score s_u ``(B,)`` and the features ``(B, F)`` (the game of every
        example; ``y`` is not read: the conditional game is :meth:`conditional_score`)."""
        return super().critic(inputs, None)

    def conditional_score(self, h: Tensor, y: Tensor) -> Tensor:
        """s_c(x, y) = psi(phi(x)) + embed(y) . phi(x) ``(B,)`` from the features ``h = phi(x)``;
        rows with ``y`` = -1 get a score that the caller masks out."""
        return (self.critic_head(h).squeeze(-1) + (self.projection(y.clamp(min=0)) * h).sum(-1)).float()

    def self_labelled(self, batch: Batch, logits: Tensor | None = None) -> Batch:
        """``batch`` with the labels the critic reads (:func:`self_labels`, from C_ema's ``logits``
        of ``batch.x``, computed when not given) and no partial mask."""
        logits = self.classify_ema(batch.x) if logits is None else logits
        labels = self_labels(logits, self.config.threshold, batch.y, batch.labelled)
        return dataclasses.replace(batch, y=labels, labelled=None)

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        if self.config.ignore_labels:
            batch = dataclasses.replace(batch, y=None, labelled=None)
        logits = self.classify_ema(batch.x)  # (B, K): the labels of the conditional game, and its weight rho
        game = super().loss(self.self_labelled(batch, logits), phase, progress)
        if phase != CRITIC:
            return game
        # C trains with the critic, on a fresh draw and the known labels
        classifier = self.classifier_objective(batch, self.draw(len(batch.x), generator=progress.generator))
        # the share of real examples the averaged classifier is sure of (the self-attention's reach)
        reach = (logits.softmax(-1).amax(-1) > self.config.threshold).float().mean()
        return Loss(game.loss + classifier.loss, {**game.metrics, **classifier.metrics, "self_labelled": reach})

    def classifier_objective(self, batch: Batch, draw: Draw) -> Loss:
        """L_C: cross-entropy of the artificial labels of generated data, plus that of the known
        labels of real data (which aligns artificial class k with real class k)."""
        with torch.no_grad():
            fake = self.generate(draw)
        fake_logits = self.classifier(fake.float()).float()  # (B, K)
        fake_ce = F.cross_entropy(fake_logits, draw.y)
        metrics = {"fake_accuracy": (fake_logits.argmax(-1) == draw.y).float().mean()}
        loss = fake_ce
        if batch.y is not None:
            known = torch.ones_like(batch.y, dtype=torch.bool) if batch.labelled is None else batch.labelled
            real_logits = self.classifier(batch.x.float()).float()
            ce = F.cross_entropy(real_logits, batch.y.clamp(min=0), reduction="none")  # (B,)
            count = known.sum().clamp(min=1)  # a tensor: no host synchronisation
            real_ce = torch.where(known, ce, torch.zeros_like(ce)).sum() / count
            loss = loss + real_ce
            metrics["real_class_loss"] = real_ce
        return Loss(loss, {"classifier_loss": fake_ce, **metrics})  # logged as critic/classifier_loss, ...

    def auxiliary_loss(self, phase: str, batch: Batch, draw: Draw, real_h: Tensor | None,
                       fake_h: Tensor, fake: tuple[Tensor, ...]) -> tuple[Tensor | float, dict[str, Tensor]]:
        """The conditional game (weighted by rho) on the features of the unconditional one, and
        the generator's classification term."""
        aux, metrics = super().auxiliary_loss(phase, batch, draw, real_h, fake_h, fake)
        kind, known = self.config.loss, batch.y >= 0  # batch: self-labelled, -1 where unlabelled
        rho = known.float().mean()
        fake_c = self.conditional_score(fake_h, draw.y)
        metrics = {**metrics, "labelled_share": rho}
        if phase == CRITIC:
            conditional = conditional_critic_loss(kind, self.conditional_score(real_h, batch.y), known, fake_c)
            return aux + conditional, {**metrics, "conditional_loss": conditional}
        aux = aux + rho * generator_loss(kind, fake_c)
        if not self.config.classifier_weight:
            return aux, metrics
        # the generator makes its parts of the partition tell apart, through the G(z, y_g) the critic scored
        ce = F.cross_entropy(self.classifier(fake[0].float()).float(), draw.y)
        return aux + self.config.classifier_weight * ce, {**metrics, "generator_class_loss": ce}
