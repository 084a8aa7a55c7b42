"""Semi-supervised deep generative models: M2, M1+M2 and the partially supervised VAE.

They learn from data whose labels are only partly known (``--labels N``: the batch's
``labelled`` mask), and give a classifier q(y|x) beside a generative model of x with its class y.

**M2** (Kingma, Rezende, Mohamed & Welling 2014, "Semi-Supervised Learning with Deep Generative
Models", arXiv:1406.5298, sec. 3)::

    p(y) = Cat(y | 1/K),  p(z) = N(z | 0, I),  p(x | y, z) = f(x; y, z)                       (eq. 2)
    q(y | x) = Cat(y | pi(x)),  q(z | x, y) = N(z | mu(x, y), diag sigma^2(x, y))             (eq. 4)

f is one of the shared likelihoods (:mod:`dgm.nn.likelihoods`) of a decoder of ``[z, onehot(y)]``.
A labelled example's bound and an unlabelled one's, with y summed out exactly (the decoder runs on
all K classes of a row at once)::

    -L(x, y) = E_q(z|x,y)[log p(x|y,z) + log p(y) + log p(z) - log q(z|x,y)]    <= log p(x, y)   (eq. 6)
    -U(x)    = sum_y q(y|x) (-L(x, y)) + H(q(y|x))                               <= log p(x)      (eq. 7)
    J^alpha  = sum_labelled L(x, y) + sum_unlabelled U(x) + alpha E_labelled[-log q(y|x)]        (eqs. 8, 9)

The KL of z is analytic. A batch's loss is the mean over its rows of L (labelled rows) or U (the
others), plus alpha times the mean over its labelled rows of -log q(y|x).

**M1+M2** (same paper, sec. 3.1.3): M1, a VAE on x with a Gaussian code z1 (eq. 1), is trained
first without labels; M2 is then trained on codes z1 ~ q(z1|x) with a Gaussian p(z1|y, z2), in a
second stage while M1 stays frozen.

**The partially supervised VAE** (Siddharth, Paige, van de Meent, Desmaison, Goodman, Kohli, Wood &
Torr 2017, "Learning Disentangled Representations with Semi-Supervised Deep Generative Models",
NeurIPS, arXiv:1706.00400, sec. 3): the same generative model, with its latents split into a
supervised part y (the class) and a free part z, and an encoder of the general form their framework
allows, here q(y, z | x) = q(z | x) q(y | x, z), so q(y|x) = E_q(z|x)[q(y|x, z)] has no closed form.
The supervised objective (eq. 3) is rewritten with q(z|x,y) = q(y,z|x) / q(y|x) (eq. 4) and
estimated by importance sampling with S draws z^s ~ q(z|x) (eqs. 5, 6)::

    L_sup(x, y) = E_q(z|x,y)[log p(x,y,z) / q(y,z|x)] + (1 + alpha) log q(y|x)                  (eq. 4)
    q(y|x) ~ 1/S sum_s w^s,   w^s = q(y, z^s | x) / q(z^s | x) = q(y | x, z^s)                  (eq. 5)
    E_q(z|x,y)[log p(x,y,z) / q(y,z|x)] ~ sum_s w^s / (sum_s' w^s') log p(x,y,z^s) / q(y,z^s|x)  (eq. 6)

The unsupervised objective is the ELBO with (y, z) latent (eq. 1); y is summed out under
q(y|x, z^1) rather than relaxed, which is exact for K classes at K decoder rows per example.

Layout: :class:`SemiSupervised` holds the process the three share (class embedding, the decoder
p(x|y,z), log p(x,y,z), the sum over y, the masked combination of labelled and unlabelled rows,
sampling, the capabilities); each model adds its inference networks and its bounds.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.data.core import Batch, DataSpec
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel, Loss, Phase, Progress, Stage, capability, randint, randn, register
from dgm.models.refusals import class_labels, refuse_unlabelled
from dgm.models.vae import VAE, VAEConfig, emit, likelihood_of
from dgm.nn import MLP, Likelihood, make_likelihood
from dgm.nn.distributions import diagonal_gaussian, normal_log_prob
from dgm.nn.likelihoods import sample_categorical
from dgm.settings import NonNegativeFloat, PositiveInt

#: The default weight of the classification term. The paper's alpha = 0.1 N multiplies the mean
#: -log q(y|x) over the labelled examples in a bound *summed* over all N examples: 0.1 per example
#: of a mean bound. That is a weak signal for the classifier, whose only other teacher is U(x)
#: (which pulls q(y|x) towards whichever class the decoder explains best, right or wrong), and
#: reimplementations that reach the paper's error rates use alpha ~ 0.1 N / N_labelled instead
#: (60 at 100 labels of 60000, 2 at 3000). Here a training batch carries about as many labelled
#: examples as unlabelled ones (data.labelled_per_batch), so one alpha serves every label count.
#: Measured on Fashion-MNIST (10000 training images, 10 epochs, the default networks; test error):
#: with 100 labels alpha = 0.1, 1, 10, 100 gave 42%, 36%, 31%, 31%; with 1000 labels alpha = 1, 10,
#: 100 gave 19.7%, 19.7%, 20.3%. (On digits, too easy to tell, alpha from 0 to 100 gave 14-16%.)
ALPHA = 10.0

#: the VAE's settings that M2 and the partially supervised VAE do not take (their objective is
#: their paper's bound, on MLP networks); M1+M2 passes them to its M1
VAE_ONLY_SETTINGS = ("network", "activation", "beta", "kl_warmup_steps", "free_bits", "iwae_k")


@dataclass
class M2Config(VAEConfig):
    """Settings of :class:`M2` (``--set model.KEY=VALUE``): the VAE's, of which M2 takes the
    observation likelihood (``likelihood``, ``gaussian_scale``, ``mixture_components``),
    ``latent_dim``, ``hidden`` and ``sample_mean``; plus ``alpha``."""

    latent_dim: PositiveInt = 50  # dimension of z (the paper: 50)
    # MLP hidden widths of the classifier and the encoder; the decoder mirrors them (the paper: 500)
    hidden: tuple[PositiveInt, ...] = (500,)
    # weight of the classification term E_labelled[-log q(y|x)] (eq. 9) beside the batch's mean
    # bound; 0 leaves q(y|x) to the unlabelled bound alone (see ALPHA for the default)
    alpha: NonNegativeFloat = ALPHA


@dataclass
class PSVAEConfig(M2Config):
    """Settings of :class:`PartiallySupervisedVAE`: M2's, plus the importance samples."""

    samples: PositiveInt = 4  # S draws z^s ~ q(z|x) of the supervised estimates (eqs. 5, 6)


@dataclass
class M1M2Config(M2Config):
    """Settings of :class:`M1M2`: ``latent_dim``, ``hidden`` and ``alpha`` are M2's (over M1's
    codes); ``m1_*`` and every other VAE setting (``likelihood``, ``network``, ``beta``, ...) are M1's."""

    m1_latent_dim: PositiveInt = 50  # dimension of M1's code z1 (the paper: 50)
    m1_hidden: tuple[PositiveInt, ...] = (600, 600)  # M1's MLP hidden widths (the paper: two layers of 600)
    m1_epochs: PositiveInt = 5  # epochs of stage "m1"; stage "m2" trains for the rest of train.epochs


@dataclass
class Bounds:
    """What a model's :meth:`SemiSupervised.bounds` gives for a batch of B examples."""

    labelled: Tensor  # (B,) a bound on log p(x, y) at the batch's labels: -L(x, y)
    unlabelled: Tensor  # (B,) a bound on log p(x), y summed out: -U(x)
    class_log_probs: Tensor  # (B, K) log q(y|x) of every class (an estimate where it has no closed form)


def full_precision(t: Tensor) -> Tensor:
    """``t`` in at least float32: under bf16 autocast the networks run in bf16, but log-densities
    summed over hundreds of pixels, and log-probabilities of classes, need float32."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class SemiSupervised(GenerativeModel):
    """The process M2, M1+M2 and the partially supervised VAE share: p(y) uniform, p(z) standard
    normal, p(x|y,z) a likelihood of a decoder of ``[z, onehot(y)]``, and the loss that mixes the
    labelled and unlabelled rows of a batch (eqs. 8, 9 of Kingma et al.).

    A subclass builds its inference networks (:meth:`build_inference`) and defines
    :meth:`class_log_probs` (a deterministic q(y|x)), :meth:`code` (the mean of z), :meth:`bounds`
    (the training terms of a batch) and :meth:`log_weights` (importance weights of (y, z), for
    :meth:`iwae_bound`). "x" below is what the process models: the data, or M1's codes in M1+M2,
    which maps the data there with :meth:`observe`.
    """

    Config = M2Config
    #: whether the VAE settings of VAE_ONLY_SETTINGS are refused (M1+M2 gives them to its M1)
    refuses_vae_settings: ClassVar[bool] = True

    def __init__(self, config: M2Config, spec: DataSpec) -> None:
        super().__init__(config, spec)
        refuse_unlabelled(self.name, spec)
        if self.refuses_vae_settings:
            defaults = {f.name: f.default for f in dataclasses.fields(VAEConfig)}
            changed = [k for k in VAE_ONLY_SETTINGS if getattr(config, k) != defaults[k]]
            if changed:
                raise DgmError(f"model {self.name!r} trains its paper's bound on MLP networks and takes no "
                               f"model.{changed[0]} (a VAE setting): drop it, or use m1m2, whose M1 takes it")
        modelled = self.modelled_spec(spec)
        self.likelihood = self.observation_model(modelled)
        out_shape = self.likelihood.params_shape
        D, d, K, hidden = modelled.dim, config.latent_dim, spec.num_classes, tuple(config.hidden)
        self.decoder = nn.Sequential(MLP(d + K, tuple(reversed(hidden)), math.prod(out_shape)),
                                     nn.Unflatten(1, out_shape))  # p(x | y, z)
        self.build_inference(D, d, K, hidden)
        self.log_prior_y = -math.log(K)  # log p(y), uniform

    # --- what the process models ------------------------------------------------------------------
    @classmethod
    def default_representation(cls, config: M2Config, spec: DataSpec) -> str:
        refuse_unlabelled(cls.name, spec)
        return VAE.default_representation.__func__(cls, config, spec)  # the VAE's rule, in this model's name

    def modelled_spec(self, spec: DataSpec) -> DataSpec:
        """The variable x the process models: the data itself."""
        return spec

    def observation_model(self, spec: DataSpec) -> Likelihood:
        """p(x|y,z)'s likelihood: the one the config names, with the VAE's options."""
        return likelihood_of(self.config, spec)

    def build_inference(self, D: int, d: int, K: int, hidden: tuple[int, ...]) -> None:
        """Build the encoder and the classifier for x of ``D`` dimensions, z of ``d``, ``K`` classes."""
        raise NotImplementedError

    def observe(self, x: Tensor) -> Tensor:
        """The variable the process models, from data ``x``: ``x`` itself (M1+M2: M1's code)."""
        return x

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def likelihood_kind(self) -> str:
        return "discrete" if self.likelihood.discrete else "density"

    @property
    def elbo_description(self) -> str:
        return "ELBO with y summed out, 1 sample of z"

    # --- shared pieces ----------------------------------------------------------------------------
    @staticmethod
    def flat(x: Tensor) -> Tensor:
        """``(B, *shape)`` examples as ``(B, D)`` floats, the MLPs' input."""
        x = x.flatten(1)
        return x if x.is_floating_point() else x.float()

    def one_hot(self, y: Tensor, like: Tensor) -> Tensor:
        """The class embedding: ``(B,)`` labels as ``(B, K)`` one-hot floats of ``like``'s dtype."""
        return F.one_hot(y, self.num_classes).to(like.dtype)

    @staticmethod
    def gaussian(h: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of a diagonal Gaussian from a network's ``(B, 2 d)`` output."""
        return diagonal_gaussian(full_precision(h))

    def tile(self, x: Tensor, n: int) -> Tensor:
        """``x`` repeated ``n`` times, sample-major: row ``s * B + b`` is ``x[b]``, ``(n * B, ...)``."""
        return x.expand(n, *x.shape).reshape(n * len(x), *x.shape[1:])

    def every_class(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Each row of ``x`` once per class, with the classes: ``(B * K, ...)`` and ``(B * K,)``."""
        K = self.num_classes
        return x.repeat_interleave(K, 0), torch.arange(K, device=x.device).repeat(len(x))

    def decoder_params(self, z: Tensor, y: Tensor) -> Tensor:
        """The likelihood's parameters for codes ``z`` (B, d) of classes ``y`` (B,), in at least float32."""
        return full_precision(self.decoder(torch.cat([z, self.one_hot(y, z)], dim=-1)))

    def log_likelihood(self, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        """log p(x | y, z) in nats, ``(B,)``."""
        return self.likelihood.log_prob(self.decoder_params(z, y), x)

    def log_joint(self, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        """log p(x, y, z) = log p(x|y,z) + log p(y) + log p(z) in nats, ``(B,)``."""
        return self.log_likelihood(x, y, z) + self.log_prior_y + normal_log_prob(z).sum(-1)

    @staticmethod
    def sum_out(class_log_probs: Tensor, class_bounds: Tensor) -> Tensor:
        """sum_y q(y) (b_y - log q(y)) = E_q(y)[b_y] + H(q), ``(B,)``: y summed out of per-class
        bounds ``b`` (B, K) under ``q`` given by its logs (B, K) (Kingma et al. eq. 7)."""
        return (class_log_probs.exp() * (class_bounds - class_log_probs)).sum(-1)

    # --- what each model defines ------------------------------------------------------------------
    def class_log_probs(self, x: Tensor) -> Tensor:
        """log q(y|x) of every class, ``(B, K)``, deterministic (the classifier at test time)."""
        raise NotImplementedError

    def code(self, x: Tensor, y: Tensor) -> Tensor:
        """The mean of z given ``x`` and its class ``y``, ``(B, latent_dim)``."""
        raise NotImplementedError

    def bounds(self, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> Bounds:
        """The training terms of examples ``x`` with labels ``y`` (any class where unknown); noise
        from ``generator``."""
        raise NotImplementedError

    def log_weights(self, x: Tensor, k: int, *, generator: torch.Generator | None = None) -> Tensor:
        """log p(x, y_i, z_i) - log q(y_i, z_i | x) for ``k`` draws (y_i, z_i) ~ q, ``(k, B)``."""
        raise NotImplementedError

    # --- training ---------------------------------------------------------------------------------
    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        x = batch.x
        known = torch.ones(len(x), dtype=torch.bool, device=x.device) if batch.labelled is None else batch.labelled
        y = batch.y.clamp(min=0)  # an unknown label (-1) is read as class 0, and masked out below
        t = self.bounds(x, y, progress.generator)
        bound = torch.where(known, t.labelled, t.unlabelled)  # L for labelled rows, U for the others (eq. 8)
        # masked means over the labelled rows, without reading the mask on the host: a batch
        # without labels sums nothing and divides by 1
        n_known = known.sum().clamp(min=1)
        log_q_y = t.class_log_probs.gather(1, y[:, None]).squeeze(1)  # log q(y|x) at the label
        classification = -torch.where(known, log_q_y, 0.0).sum() / n_known  # E_labelled[-log q(y|x)] (eq. 9)
        correct = known & (t.class_log_probs.argmax(1) == y)
        return Loss(-bound.mean() + self.config.alpha * classification,
                    {"labelled_bound": torch.where(known, t.labelled, 0.0).sum() / n_known,  # log p(x, y), labelled rows
                     "unlabelled_bound": t.unlabelled.mean(),  # log p(x), every row
                     "classification": classification,
                     "accuracy": correct.sum() / n_known})

    # --- bounds ---------------------------------------------------------------------------------
    def unlabelled_bound(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """-U(x), the bound on log p(x) with y summed out, nats, ``(B,)``."""
        return self.bounds(x, torch.zeros(len(x), dtype=torch.long, device=x.device), generator).unlabelled

    def elbo(self, x: Tensor) -> Tensor:
        """-U(x): log p(x) >= E_q(y|x)[-L(x, y)] + H(q(y|x)), one sample of z per class, nats, ``(B,)``."""
        return self.unlabelled_bound(x)

    def iwae_bound(self, x: Tensor, k: int, *, chunk: int = 500, generator: torch.Generator | None = None) -> Tensor:
        """L_k = log 1/k sum_i p(x, y_i, z_i) / q(y_i, z_i | x) over k joint draws from the encoder
        (Burda et al. 2016, eq. 8), nats, ``(B,)``: the VAE's chunked estimator over this model's
        :meth:`log_weights`."""
        return VAE.iwae_bound(self, x, k, chunk=chunk, generator=generator)  # type: ignore[arg-type]

    # --- the classifier and codes -----------------------------------------------------------------
    @capability
    @torch.inference_mode()
    def classify(self, x: Tensor) -> Tensor:
        """q(y|x), ``(B, K)`` class probabilities whose rows sum to 1."""
        return self.class_log_probs(self.observe(x)).exp()

    def encode(self, x: Tensor) -> Tensor:
        """The mean of z given x and its most likely class (argmax q(y|x)), ``(B, latent_dim)``."""
        v = self.observe(x)
        return self.code(v, self.class_log_probs(v).argmax(-1))

    @capability
    @torch.inference_mode()
    def manipulate(self, x: Tensor, target: Tensor, *, source: Tensor | None = None) -> Tensor:
        """``x`` with its class set to ``target`` (B,) and its style kept: the decoder mean at the
        mean of z given x and its class ``source`` (B,) (by default argmax q(y|x)), ``(B, *shape)``."""
        v, n = self.observe(x), len(x)
        target = class_labels(self.name, target, n, self.num_classes, self.device)
        source = (self.class_log_probs(v).argmax(-1) if source is None
                  else class_labels(self.name, source, n, self.num_classes, self.device))
        return self.decoded_mean(self.code(v, source), target)

    # --- generation -------------------------------------------------------------------------------
    def generate(self, z: Tensor, y: Tensor, generator: torch.Generator | None) -> Tensor:
        """Data ``(B, *spec.shape)`` from codes ``z`` of classes ``y``."""
        return emit(self.likelihood, self.decoder_params(z, y), mean=self.config.sample_mean, generator=generator)

    def decoded_mean(self, z: Tensor, y: Tensor) -> Tensor:
        """The decoder's mean ``(B, *spec.shape)`` for codes ``z`` of classes ``y``."""
        return self.likelihood.mean(self.decoder_params(z, y))

    def sample(self, n: int, condition: Tensor | int | None = None, *,
               generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples of the classes ``condition`` (one for all, or ``n``), else of y ~ p(y)."""
        y = class_labels(self.name, condition, n, self.num_classes, self.device)
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=self.device)
        if y is None:
            y = randint(self.num_classes, (n,), like=z, generator=generator)
        return self.generate(z, y, generator)

    def report_figures(self, *, generator: torch.Generator | None = None) -> list[tuple[str, Tensor, int, str]]:
        K, rows = self.num_classes, 8
        names = ", ".join(self.spec.class_names or [str(k) for k in range(K)])
        classes = torch.arange(K, device=self.device)
        z = torch.randn(rows, self.config.latent_dim, generator=generator, device=self.device)
        analogies = self.generate(z.repeat_interleave(K, 0), classes.repeat(rows), generator)
        samples = self.sample(K * rows, classes.repeat_interleave(rows), generator=generator)
        return [("Analogies: fix z, vary the class", analogies, K,
                 f"{rows} rows of {K}: each row keeps one style z ~ N(0, I) and sets the class along the "
                 f"columns ({names})"),
                ("Class-conditional samples", samples, rows,
                 f"{K} rows of {rows}: row k holds samples of class k ({names}), each with its own z ~ N(0, I)")]


@register
class M2(SemiSupervised):
    """M2 of Kingma et al. 2014: a classifier q(y|x), an encoder q(z|x, y) and a decoder p(x|y, z),
    trained on the labelled bound, the unlabelled bound with y summed out, and the classification
    term (eqs. 6, 7, 9).

    Example:
        >>> data = dgm.data.load("digits", representation="binary-dynamic").with_labelled(100, 0)
        >>> m2 = dgm.create("m2", data.spec, latent_dim=8, hidden=(128,))
        >>> m2.loss(data.tensors(32), "model", Progress()).loss.backward()
    """

    name = "m2"
    Config = M2Config
    description = "M2 semi-supervised VAE: classifier q(y|x), y summed out of unlabelled bounds (Kingma et al. 2014)"

    def build_inference(self, D: int, d: int, K: int, hidden: tuple[int, ...]) -> None:
        self.classifier = MLP(D, hidden, K)  # q(y|x) = Cat(pi(x))  (eq. 4)
        self.encoder = MLP(D + K, hidden, 2 * d)  # q(z|x, y) = N(mu(x, y), diag sigma^2(x, y))  (eq. 4)

    def class_log_probs(self, x: Tensor) -> Tensor:
        return full_precision(self.classifier(self.flat(x))).log_softmax(-1)

    def posterior(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z|x, y), each ``(B, latent_dim)``."""
        h = self.flat(x)
        return self.gaussian(self.encoder(torch.cat([h, self.one_hot(y, h)], dim=-1)))

    def code(self, x: Tensor, y: Tensor) -> Tensor:
        return self.posterior(x, y)[0]

    def labelled_bound(self, x: Tensor, y: Tensor, *, eps: Tensor | None = None,
                       generator: torch.Generator | None = None) -> Tensor:
        """-L(x, y) <= log p(x, y) (eq. 6) with the analytic KL of z, nats, ``(B,)``; z = mu + sigma
        eps with the standard normal ``eps`` (B, latent_dim) given, or drawn from ``generator``."""
        mu, logvar = self.posterior(x, y)
        eps = randn(mu.shape, like=mu, generator=generator) if eps is None else eps
        z = mu + eps * (0.5 * logvar).exp()  # VAE.reparameterize, with the noise given
        return self.log_likelihood(x, y, z) + self.log_prior_y - VAE.analytic_kl(mu, logvar).sum(-1)

    def class_bounds(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """-L(x, y) of every class y, ``(B, K)``: the networks run on the B x K rows at once, and
        the K classes of a row share one draw of the noise of z (common random numbers: the
        differences between classes, which U(x) teaches q(y|x) with, carry less noise)."""
        eps = randn((len(x), self.config.latent_dim), like=self.flat(x), generator=generator)
        rows, classes = self.every_class(x)
        return self.labelled_bound(rows, classes, eps=eps.repeat_interleave(self.num_classes, 0)).view(len(x), -1)

    def bounds(self, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> Bounds:
        log_q = self.class_log_probs(x)  # (B, K)
        every = self.class_bounds(x, generator)  # (B, K): a labelled row's bound is one of them
        return Bounds(labelled=every.gather(1, y[:, None]).squeeze(1),
                      unlabelled=self.sum_out(log_q, every),  # eq. 7
                      class_log_probs=log_q)

    def log_weights(self, x: Tensor, k: int, *, generator: torch.Generator | None = None) -> Tensor:
        """log p(x, y, z) - log q(y|x) q(z|x, y) for k draws y ~ q(y|x), z ~ q(z|x, y), ``(k, B)``."""
        log_q = self.class_log_probs(x)  # (B, K)
        y = sample_categorical(log_q.expand(k, *log_q.shape), -1, generator).flatten()  # (k * B,)
        rows = self.tile(x, k)
        mu, logvar = self.posterior(rows, y)
        z = VAE.reparameterize(mu, logvar, generator)
        log_q_yz = self.tile(log_q, k).gather(1, y[:, None]).squeeze(1) + normal_log_prob(z, mu, logvar).sum(-1)
        return (self.log_joint(rows, y, z) - log_q_yz).view(k, len(x))


@register
class M1M2(M2):
    """M1+M2 of Kingma et al. 2014: a VAE (M1) trained on x without labels in stage ``"m1"``, then
    M2 trained on its codes z1 ~ q(z1|x) with a Gaussian p(z1|y, z2) in stage ``"m2"``.

    The classifier reads M1's mean code; samples draw z1 ~ p(z1|y, z2) and show M1's decoder mean.
    """

    name = "m1m2"
    Config = M1M2Config
    description = "M1+M2: M2 over the codes of a VAE trained first without labels (Kingma et al. 2014)"
    refuses_vae_settings = False  # the VAE's settings are M1's

    def __init__(self, config: M1M2Config, spec: DataSpec) -> None:
        super().__init__(config, spec)
        m1 = {f.name: getattr(config, f.name) for f in dataclasses.fields(VAEConfig)}
        self.m1 = VAE(VAEConfig(**{**m1, "latent_dim": config.m1_latent_dim, "hidden": config.m1_hidden}), spec)

    def modelled_spec(self, spec: DataSpec) -> DataSpec:
        """M2 models M1's codes: vectors of ``m1_latent_dim`` reals, with the data's classes."""
        return DataSpec(f"{spec.name} M1 codes", (self.config.m1_latent_dim,), "continuous", levels=None,
                        num_classes=spec.num_classes, class_names=spec.class_names)

    def observation_model(self, spec: DataSpec) -> Likelihood:
        # p(z1 | y, z2) = N(mu(y, z2), diag sigma^2(y, z2)): a decoded scale, since how far a code
        # strays from its mean varies from class to class and from M1's active units to its idle ones
        return make_likelihood("gaussian", spec, scale="output")

    def observe(self, x: Tensor) -> Tensor:
        return self.m1.encode(x)  # the mean of q(z1 | x)

    @property
    def likelihood_kind(self) -> str:
        return self.m1.likelihood_kind

    @property
    def elbo_description(self) -> str:
        return "ELBO, 1 sample of z1 and of z2, y summed out"

    # --- two stages ---------------------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        m1 = list(self.m1.parameters())
        own = {id(p) for p in m1}
        return [Phase("m1", m1), Phase("m2", [p for p in self.parameters() if id(p) not in own])]

    def stages(self) -> list[Stage]:
        m1, m2 = self.phases()
        return [Stage("m1", [m1], epochs=self.config.m1_epochs), Stage("m2", [m2])]

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        if phase == "m1":
            return self.m1.loss(batch, "model", progress)  # the VAE's ELBO on x; labels unused
        with torch.no_grad():  # M1 is frozen in this stage (the trainer freezes it too)
            z1 = VAE.reparameterize(*self.m1.posterior(batch.x), progress.generator)  # sampled, as in the paper
        return super().loss(dataclasses.replace(batch, x=z1), phase, progress)

    # --- bounds on log p(x) of the whole model ----------------------------------------------------
    def elbo(self, x: Tensor) -> Tensor:
        """log p(x) >= E_q(z1|x)[log p(x|z1) - log q(z1|x) + (-U(z1))], a bound because M2's -U(z1)
        is one on log p(z1), the prior of z1; one sample of z1 (and of z2 per class), nats, ``(B,)``."""
        mu, logvar = self.m1.posterior(x)
        z1 = VAE.reparameterize(mu, logvar)
        return self.m1.log_likelihood(x, z1) - normal_log_prob(z1, mu, logvar).sum(-1) + super().elbo(z1)

    def log_weights(self, x: Tensor, k: int, *, generator: torch.Generator | None = None) -> Tensor:
        """log p(x|z1) p(z1, y, z2) - log q(z1|x) q(y, z2|z1) for k joint draws, ``(k, B)``."""
        mu, logvar = self.m1.posterior(x)
        B, d1 = mu.shape
        z1 = VAE.reparameterize(mu.expand(k, B, d1), logvar.expand(k, B, d1), generator)  # (k, B, d1)
        m1 = (self.m1.log_likelihood(self.tile(x, k), z1.flatten(0, 1)).view(k, B)
              - normal_log_prob(z1, mu, logvar).sum(-1))
        return m1 + super().log_weights(z1.flatten(0, 1), 1, generator=generator).view(k, B)

    # --- generation through M1's decoder ------------------------------------------------------------
    def generate(self, z: Tensor, y: Tensor, generator: torch.Generator | None) -> Tensor:
        z1 = self.likelihood.sample(self.decoder_params(z, y), generator)  # z1 ~ p(z1 | y, z2)
        return emit(self.m1.likelihood, self.m1.decoder_params(z1), mean=self.config.sample_mean, generator=generator)

    def decoded_mean(self, z: Tensor, y: Tensor) -> Tensor:
        return self.m1.decode(super().decoded_mean(z, y))


@register
class PartiallySupervisedVAE(SemiSupervised):
    """The partially supervised VAE of Siddharth et al. 2017: q(z|x) then q(y|x, z), so that the
    supervised objective needs q(y|x) = E_q(z|x)[q(y|x, z)], estimated by importance sampling
    with S draws of z (eqs. 4-6); the unsupervised one sums y out (eq. 1).

    :meth:`classify` is q(y|x, z) at the mean of q(z|x), deterministic and one pass (the S-sample
    estimate of eq. 5 is the training one, :meth:`bounds`).

    Example:
        >>> data = dgm.data.load("digits", representation="binary-dynamic").with_labelled(100, 0)
        >>> vae = dgm.create("ps-vae", data.spec, latent_dim=8, hidden=(128,), samples=4)
        >>> vae.loss(data.tensors(32), "model", Progress()).loss.backward()
    """

    name = "ps-vae"
    Config = PSVAEConfig
    description = ("partially supervised VAE: q(z|x) q(y|x,z), importance-sampled supervised bound at any "
                   "supervision rate (Siddharth et al. 2017)")

    def build_inference(self, D: int, d: int, K: int, hidden: tuple[int, ...]) -> None:
        self.encoder = MLP(D, hidden, 2 * d)  # q(z|x): the free part
        self.classifier = MLP(D + d, hidden, K)  # q(y|x, z): the supervised part

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z|x), each ``(B, latent_dim)``."""
        return self.gaussian(self.encoder(self.flat(x)))

    def class_log_probs_given(self, x: Tensor, z: Tensor) -> Tensor:
        """log q(y|x, z) of every class, ``(B, K)``."""
        return full_precision(self.classifier(torch.cat([self.flat(x), z], dim=-1))).log_softmax(-1)

    def class_log_probs(self, x: Tensor) -> Tensor:
        return self.class_log_probs_given(x, self.posterior(x)[0])  # q(y|x, z) at z = the mean of q(z|x)

    def code(self, x: Tensor, y: Tensor) -> Tensor:
        return self.posterior(x)[0]  # z does not depend on y in this encoder

    def bounds(self, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> Bounds:
        B, S = len(x), self.config.samples
        mu, logvar = self.posterior(x)  # (B, d)
        z = VAE.reparameterize(mu.expand(S, *mu.shape), logvar.expand(S, *mu.shape), generator)  # z^s ~ q(z|x), (S, B, d)
        rows = self.tile(x, S)
        log_q_y = self.class_log_probs_given(rows, z.flatten(0, 1)).view(S, B, -1)  # log q(y|x, z^s), (S, B, K)
        # eq. 5 for every class at once: q(y|x) ~ 1/S sum_s w^s with w^s = q(y|x, z^s)
        class_log_probs = log_q_y.logsumexp(0) - math.log(S)  # (B, K)
        # eq. 6: log p(x, y, z^s) / q(y, z^s | x), averaged with the self-normalised weights w^s
        log_w = log_q_y.gather(2, y.expand(S, B)[..., None]).squeeze(2)  # (S, B)
        log_ratio = (self.log_joint(rows, y.repeat(S), z.flatten(0, 1)).view(S, B)
                     - normal_log_prob(z, mu, logvar).sum(-1) - log_w)
        # eq. 4: the "1 +" of (1 + alpha) log q(y|x) completes the bound on log p(x, y); the loss adds alpha's
        labelled = (log_w.softmax(0) * log_ratio).sum(0) + class_log_probs.gather(1, y[:, None]).squeeze(1)
        # eq. 1 with (y, z) latent: y summed out under q(y|x, z^1), the KL of z analytic
        first, (every_row, every_y) = z[0], self.every_class(x)
        every = (self.log_likelihood(every_row, every_y, first.repeat_interleave(self.num_classes, 0)).view(B, -1)
                 + self.log_prior_y)
        unlabelled = self.sum_out(log_q_y[0], every) - VAE.analytic_kl(mu, logvar).sum(-1)
        return Bounds(labelled, unlabelled, class_log_probs)

    def log_weights(self, x: Tensor, k: int, *, generator: torch.Generator | None = None) -> Tensor:
        """log p(x, y, z) - log q(z|x) q(y|x, z) for k draws z ~ q(z|x), y ~ q(y|x, z), ``(k, B)``."""
        mu, logvar = self.posterior(x)
        z = VAE.reparameterize(self.tile(mu, k), self.tile(logvar, k), generator)  # (k * B, d)
        rows = self.tile(x, k)
        log_q_y = self.class_log_probs_given(rows, z)
        y = sample_categorical(log_q_y, -1, generator).squeeze(-1)
        log_q = (normal_log_prob(z, self.tile(mu, k), self.tile(logvar, k)).sum(-1)
                 + log_q_y.gather(1, y[:, None]).squeeze(1))
        return (self.log_joint(rows, y, z) - log_q).view(k, len(x))
