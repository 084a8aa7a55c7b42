"""Autoregressive models of images, subpixel by subpixel: PixelCNN, Gated PixelCNN, PixelRNN (Row
LSTM) and the image transformer, with sequential, cached and Langevin samplers.

The factorisation (van den Oord, Kalchbrenner & Kavukcuoglu 2016, "Pixel Recurrent Neural
Networks", arXiv:1601.06759, eqs. 1-2) over the D = C H W subpixels in raster order, the colour
channel innermost (R, then G, then B at a pixel)::

    p(x) = prod_{i=1}^{D} p(x_i | x_<i)

A network (:mod:`dgm.nn.pixelcnn`, :mod:`dgm.nn.pixelrnn`, :mod:`dgm.nn.transformer`) maps the
image to the parameters of all D conditionals in one pass (teacher forcing), and an observation
likelihood (:mod:`dgm.nn.likelihoods`) turns them into log P(x_i | x_<i): a 256-way softmax
(PixelRNN, section 5.3), a discretized logistic mixture (Salimans et al. 2017, PixelCNN++,
arXiv:1701.05517), or a Bernoulli for binarized data. log p(x) is exact: nats for binarized data,
bits/dim for 8-bit data.

Class conditioning (van den Oord et al. 2016b, arXiv:1606.05328, eq. 4): a learned embedding h of
the class is given to every layer. A conditional model's :meth:`PixelModel.log_prob` is the exact
marginal over a uniform class prior, log p(x) = logsumexp_y log p(x | y) - log K.

Sampling sequentially costs D network passes; rows below the one being drawn never influence it,
so each pass runs on the rows drawn so far only (about half the work of whole images).

Parallel sampling by Langevin dynamics (Jayaram & Thickstun 2021, "Parallel and Flexible Sampling
from Autoregressive Models via Langevin Dynamics", arXiv:2105.08164, section 3.1). With
``noise_levels = N > 0`` the network also learns the clean conditionals given a *noisy* history
x~ = x + sigma eps (sigma one of N levels, geometric from ``sigma_max`` to ``sigma_min``, on the
[-1, 1] scale the network sees). Convolving each conditional with a Gaussian gives a density that
is differentiable in x~ (their "discretized autoregressive smoothing")::

    p_sigma(x~) = prod_i sum_k P(x_i = v_k | x~_<i; sigma) N(x~_i; v_k, sigma^2)

and annealed Langevin dynamics (Song & Ermon 2019, arXiv:1907.05600, Algorithm 1) over the levels
moves every pixel at once::

    x~ <- x~ + alpha_l / 2 grad log p_sigma_l(x~) + sqrt(alpha_l) z,   alpha_l = eps sigma_l^2 / sigma_N^2

(:mod:`dgm.models.langevin`), after which each subpixel is drawn from its exact posterior given the
noisy image, P(x_i = v_k | x~_<=i) proportional to P(v_k | x~_<i; sigma_N) N(x~_i; v_k, sigma_N^2), all in
parallel. Any known view of the image (a mask, low-resolution or grey version) is imposed after
every step, so the same sampler completes and restores (:meth:`PixelModel.restore`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from dgm.data.core import BINARY_REPRESENTATIONS, Batch, DataSpec
from dgm.errors import DgmError
from dgm.models import langevin
from dgm.models.base import GenerativeModel, Loss, Progress, Sampler, capability, class_marginal, rand, randint, randn, register
from dgm.models.refusals import class_labels, refuse_all_but_discrete_images, refuse_partial_labels
from dgm.models.samplers import Inpaint, KnownView
from dgm.nn import make_likelihood, to_levels
from dgm.nn.likelihoods import sample_categorical
from dgm.nn.distributions import normal_log_prob
from dgm.settings import Fraction, NonNegativeInt, PositiveFloat, PositiveInt

#: why the pixel models refuse token sequences and point sets
PADDING_REASON = "it models every subpixel of a fixed-size image, so it would model the padding as data"
CONDITION_DIM = 32  # width of the conditioning vector h (class and noise level embeddings)


@dataclass
class PixelConfig:
    """Settings every pixel model shares (``--set model.KEY=VALUE``)."""

    likelihood: Literal["logistic-mixture", "categorical"] = "logistic-mixture"  # 8-bit data: PixelCNN++'s mixture or PixelRNN's 256-way softmax (binarized data: Bernoulli)
    mixture_components: PositiveInt = 5  # logistic-mixture: logistics per subpixel
    conditional: bool = False  # class-conditional (the data's labels), a class embedding in every layer
    noise_levels: NonNegativeInt = 0  # N: also learn from noisy histories at N levels, for the Langevin sampler (0: off)
    sigma_max: PositiveFloat = 1.0  # largest noise level, on the [-1, 1] scale of the network's input
    sigma_min: PositiveFloat = 0.01  # smallest noise level (a level of 8-bit data is 0.0078 wide)
    noised_fraction: Fraction = 0.5  # with noise_levels: share of training examples seen with a noisy history
    langevin_steps: PositiveInt = 20  # Langevin steps per noise level (sampler default)
    langevin_step_size: PositiveFloat = 2e-5  # eps: the step at level l is eps sigma_l^2 / sigma_min^2 (sampler default)


@dataclass
class LangevinOptions:
    """Options of the Langevin sampler (``--sampler langevin``)."""

    steps: PositiveInt | None = field(default=None, metadata={
        "help": "Langevin steps per noise level; default model.langevin_steps"})
    step_size: PositiveFloat | None = field(default=None, metadata={
        "help": "eps of the step eps sigma^2 / sigma_min^2; default model.langevin_step_size"})


SEQUENTIAL = Sampler("sequential", "ancestral sampling, one network pass per subpixel (exact)")
LANGEVIN = Sampler("langevin", "annealed Langevin dynamics on the noise-smoothed model, all pixels in parallel "
                   "(Jayaram & Thickstun 2021; needs model.noise_levels > 0)", LangevinOptions)


class PixelModel(GenerativeModel):
    """What the pixel-by-pixel models share: the factorisation, the likelihood over every subpixel,
    class and noise-level conditioning, the samplers and completion. A subclass builds its network
    in :meth:`build_network`; everything else is here."""

    Config = PixelConfig
    samplers = (SEQUENTIAL, LANGEVIN)
    #: whether the network takes the first rows of an image alone (convolutions and row recurrences
    #: do; the transformer is built for whole images)
    takes_first_rows: bool = True

    @classmethod
    def default_representation(cls, config: PixelConfig, spec: DataSpec) -> str:
        refuse_all_but_discrete_images(cls.name, spec, "models images of discrete levels", PADDING_REASON)
        return "unit"

    def __init__(self, config: PixelConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        self.default_representation(config, spec)
        if spec.representation in ("dequantized", "continuous"):
            raise DgmError(f"model {self.name!r} models discrete pixels, got representation {spec.representation!r}: "
                           f"drop --set data.representation (or use binary-dynamic for binarized images)")
        c = config
        if c.conditional and not spec.num_classes:
            raise DgmError(f"a class-conditional model needs labelled data, and {spec.name!r} has no labels: "
                           f"set model.conditional=false")
        if c.noise_levels and c.sigma_min >= c.sigma_max:
            raise DgmError(f"model.sigma_min ({c.sigma_min}) must be below model.sigma_max ({c.sigma_max})")
        binary = spec.representation in BINARY_REPRESENTATIONS
        options = {"components": c.mixture_components} if c.likelihood == "logistic-mixture" and not binary else {}
        self.likelihood = make_likelihood("bernoulli" if binary else c.likelihood, spec, **options)
        K = self.likelihood.num_outcomes
        # v_k, the value of outcome k on the [-1, 1] scale the network sees
        self.register_buffer("values", torch.linspace(-1.0, 1.0, K), persistent=False)
        # sigma_0 = 0 (clean), then sigma_1 > ... > sigma_N, geometric
        sigmas = torch.cat([torch.zeros(1), torch.logspace(math.log10(c.sigma_max), math.log10(c.sigma_min),
                                                          c.noise_levels)]) if c.noise_levels else torch.zeros(1)
        self.register_buffer("sigmas", sigmas, persistent=False)
        self.class_embedding = nn.Embedding(spec.num_classes, CONDITION_DIM) if c.conditional else None
        self.level_embedding = nn.Embedding(c.noise_levels + 1, CONDITION_DIM) if c.noise_levels else None
        conditioned = c.conditional or c.noise_levels > 0
        self.network = self.build_network(spec.shape[0], self.likelihood.params_shape[0],
                                          CONDITION_DIM if conditioned else 0)

    def build_network(self, channels: int, out_channels: int, condition_dim: int) -> nn.Module:
        """The network ``(x (B, C, H, W) in [-1, 1], h (B, condition_dim) | None) -> (B, out_channels, H, W)``,
        channel-major, whose output for subpixel (i, j, c) sees only the subpixels before it."""
        raise NotImplementedError

    def features(self, width: int) -> int:
        """``width`` rounded up to a multiple of the data channels: masked layers split their features
        into one block per colour channel (64 -> 66 for RGB)."""
        C = self.spec.shape[0]
        return -(-width // C) * C

    @property
    def num_classes(self) -> int | None:
        return self.spec.num_classes if self.config.conditional else None

    @property
    def dim(self) -> int:
        return math.prod(self.spec.shape)

    # --- the network and the conditionals ----------------------------------------------------------
    def to_signed(self, x: Tensor) -> Tensor:
        """Data in its representation -> the [-1, 1] values v_k the network sees."""
        k = x if self.spec.representation in BINARY_REPRESENTATIONS else to_levels(x, self.spec)
        return self.values[k.long()]

    def from_outcomes(self, k: Tensor) -> Tensor:
        """Outcome indices (levels, or 0/1) -> data in the model's representation."""
        if self.spec.representation in BINARY_REPRESENTATIONS:
            return k.float()
        if self.spec.representation == "levels":
            return k
        return self.values[k] if self.spec.representation == "signed" else k.float() / (self.likelihood.num_outcomes - 1)

    def conditioning(self, y: Tensor | None, level: Tensor | None, batch: int) -> Tensor | None:
        """h = class embedding + noise-level embedding, ``(B, CONDITION_DIM)``, or ``None``."""
        h = None
        if self.class_embedding is not None:
            if y is None:
                raise DgmError(f"this {self.name} is class-conditional: give the class labels")
            h = self.class_embedding(y)
        if self.level_embedding is not None:
            if level is None:
                level = torch.zeros(batch, dtype=torch.long, device=self.device)
            e = self.level_embedding(level)
            h = e if h is None else h + e
        return h

    def params(self, inputs: Tensor, y: Tensor | None = None, level: Tensor | None = None) -> Tensor:
        """The likelihood's parameters of every subpixel, ``(B, C * P, H', W)`` for inputs
        ``(B, C, H', W)`` on the [-1, 1] scale (H' <= H: the first rows), in at least float32 (under
        bf16 autocast the network runs in bf16, the log-likelihoods summed over D terms do not)."""
        params = self.network(inputs, self.conditioning(y, level, len(inputs)))
        return params.float() if params.dtype in (torch.bfloat16, torch.float16) else params

    # --- likelihood and training ---------------------------------------------------------------------
    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        x = batch.x
        if self.config.conditional:
            refuse_partial_labels(self.name, batch, "as a class-conditional model")
        inputs, level = self.to_signed(x), None
        if self.config.noise_levels:  # a noisy history for a share of the batch (section 3.1)
            g = progress.generator
            noised = rand((len(x),), like=inputs, generator=g) < self.config.noised_fraction
            level = torch.where(noised, 1 + randint(self.config.noise_levels, (len(x),), like=inputs, generator=g), 0)
            sigma = self.sigmas[level].view(-1, 1, 1, 1)
            inputs = inputs + sigma * randn(inputs.shape, like=inputs, generator=g)
        log_px = self.likelihood.log_prob(self.params(inputs, batch.y if self.config.conditional else None, level), x)
        nll = -log_px.mean()
        metrics = {"nll": nll.detach()}
        if self.likelihood.num_outcomes > 2:
            metrics["bits_per_dim"] = nll.detach() / (self.dim * math.log(2))
        return Loss(nll / self.dim, metrics)  # per subpixel, so the learning rate does not depend on the size

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log p(x) in nats, ``(B,)``; for a class-conditional model the marginal over a
        uniform class prior (K network passes)."""
        if not self.config.conditional:
            return self.likelihood.log_prob(self.params(self.to_signed(x)), x)
        return class_marginal(self.conditional_log_prob, x, self.spec.num_classes)

    @capability
    def conditional_log_prob(self, x: Tensor, y: Tensor) -> Tensor:
        """Exact log p(x | y) in nats, ``(B,)``, of a class-conditional model (``dgm classify``
        turns it into p(y | x) by Bayes' rule)."""
        return self.likelihood.log_prob(self.params(self.to_signed(x), y), x)

    def withheld_capabilities(self) -> dict[str, str]:
        if self.config.conditional:
            return {}
        return {"conditional_log_prob": "the model is unconditional (train with --set model.conditional=true)"}

    def smoothed_log_density(self, noisy: Tensor, y: Tensor | None, level: int) -> Tensor:
        """log p_sigma(x~) of the noise-smoothed model at noise ``level`` (1..N), ``(B,)``: every
        conditional's pmf convolved with N(0, sigma^2) (module docstring)."""
        sigma = self.sigmas[level]
        levels = torch.full((len(noisy),), level, device=noisy.device)
        log_pmf = self.likelihood.outcome_log_probs(self.params(noisy, y, levels))  # (B, C, K, H, W)
        v = self.values.view(1, 1, -1, 1, 1)
        log_noise = normal_log_prob(noisy.unsqueeze(2), v, 2 * torch.log(sigma))  # (B, C, K, H, W)
        return torch.logsumexp(log_pmf + log_noise, 2).flatten(1).sum(1)

    # --- generation ----------------------------------------------------------------------------------
    def labels(self, condition: Tensor | None, n: int, generator: torch.Generator | None) -> Tensor | None:
        """The class of each of n samples: the given ones, or uniform ones for a conditional model."""
        y = class_labels(self.name, condition, n, self.num_classes, self.device)
        if y is None and self.config.conditional:
            y = randint(self.spec.num_classes, (n,), like=self.values, generator=generator)
        return y

    def sample(self, n: int, condition: Tensor | None = None, *, generator: torch.Generator | None = None,
               sampler: str | None = None, steps: int | None = None, step_size: float | None = None,
               progress: bool = False) -> Tensor:
        """``n`` samples ``(n, C, H, W)`` in the data representation, by ``sampler`` (default: the
        model's first): ``sequential`` (exact), ``cached`` (the transformer) or ``langevin``."""
        y = self.labels(condition, n, generator)
        return self.generate(*self.blank(n), y, sampler=sampler or self.default_sampler,
                             generator=generator, steps=steps, step_size=step_size, progress=progress)

    def blank(self, n: int) -> tuple[Tensor, Tensor]:
        """``n`` images of outcome 0 in the data representation, and ``todo``: every subpixel to draw."""
        x = self.from_outcomes(torch.zeros(n, *self.spec.shape, dtype=torch.long, device=self.device))
        return x, torch.ones(n, *self.spec.shape, dtype=torch.bool, device=self.device)

    def generate(self, x: Tensor, todo: Tensor, y: Tensor | None, *, sampler: str,
                 generator: torch.Generator | None, steps: int | None = None, step_size: float | None = None,
                 progress: bool = False, view: KnownView | None = None) -> Tensor:
        """Draw the subpixels of ``x`` (data representation) where ``todo`` is true; ``view``: a known
        linear view to impose (Langevin restoration)."""
        names = [s.name for s in self.samplers]
        if sampler not in names:
            raise DgmError(f"model {self.name!r} has no sampler {sampler!r}: use one of {', '.join(names)}")
        if sampler == "langevin":
            return self.langevin(x, todo, y, generator=generator, steps=steps, step_size=step_size,
                                 progress=progress, view=view)
        if steps is not None or step_size is not None:
            raise DgmError(f"--steps and --step-size are options of the langevin sampler, and this runs {sampler}: "
                           f"add --sampler langevin")
        if view is not None and not isinstance(view, Inpaint):
            raise DgmError(f"the {sampler} sampler completes known pixels only; a {type(view).__name__} view needs "
                           f"--sampler langevin")
        return self.ancestral(x, todo, y, sampler=sampler, generator=generator, progress=progress)

    def draw_outcome(self, params: Tensor, c: int, generator: torch.Generator | None) -> Tensor:
        """An outcome index of data channel ``c`` drawn from ``params`` ``(B, C * P)`` of one pixel, ``(B,)``:
        the Gumbel-max trick on log P(k), with noise ``(B, K)`` from ``generator``."""
        log_p = self.likelihood.outcome_log_probs(params[:, :, None, None].float())[:, c, :, 0, 0]  # (B, K)
        return sample_categorical(log_p, 1, generator).squeeze(1)

    def ancestral(self, x: Tensor, todo: Tensor, y: Tensor | None, *, sampler: str,
                  generator: torch.Generator | None, progress: bool) -> Tensor:
        """Ancestral sampling in raster order, subpixel by subpixel, of the subpixels where ``todo``;
        the others are kept (exact conditioning when they all come first: a completion)."""
        C, H, W = self.spec.shape
        x = x.clone()
        rows = [i for i in range(H) if todo[:, :, i].any()]
        positions = [(i, j, c) for i in rows for j in range(W) for c in range(C)]
        if progress:
            from tqdm.auto import tqdm

            positions = tqdm(positions, desc=f"{sampler} sampling", unit="subpixel", leave=False)
        for i, j, c in positions:
            # rows below i never reach row i (masked or causal), so the pass sees rows 0..i only
            seen = x[:, :, :i + 1] if self.takes_first_rows else x
            params = self.params(self.to_signed(seen), y)[:, :, i, j]  # (B, C * P)
            k = self.draw_outcome(params, c, generator)
            x[:, c, i, j] = torch.where(todo[:, c, i, j], self.from_outcomes(k).to(x.dtype), x[:, c, i, j])
        return x

    def langevin(self, x: Tensor, todo: Tensor, y: Tensor | None, *, generator: torch.Generator | None,
                 steps: int | None, step_size: float | None, progress: bool, view: KnownView | None) -> Tensor:
        """Annealed Langevin dynamics on the smoothed model, then the exact per-subpixel posterior draw
        (module docstring); pixels not in ``todo`` (and a ``view``) are imposed after every step."""
        c = self.config
        if not c.noise_levels:
            raise DgmError(f"this {self.name} was trained without noise levels, so it has no Langevin sampler: "
                           f"train with --set model.noise_levels=10 (or use --sampler sequential)")
        known = view_on_signed_scale(view, self) if view is not None else None
        kept = self.to_signed(x)

        def impose(noisy: Tensor, sigma: float) -> Tensor:
            """The known part of x~ at this level: the kept subpixels (or the view) plus sigma noise."""
            eps = randn(noisy.shape, like=noisy, generator=generator)
            if known is not None:
                return known.replace(noisy, known.y + sigma * known.project(eps))
            return torch.where(todo, noisy, kept + sigma * eps)

        def score(noisy: Tensor, level: int) -> Tensor:
            """grad log p_sigma(x~) by autograd, outside the inference mode generation runs in."""
            with torch.inference_mode(False), torch.enable_grad():
                leaf = noisy.clone().requires_grad_(True)
                labels = None if y is None else y.clone()
                total = self.smoothed_log_density(leaf, labels, level).sum()
                return torch.autograd.grad(total, leaf)[0]

        sigmas = self.sigmas[1:].tolist()
        noisy = impose(sigmas[0] * randn(kept.shape, like=kept, generator=generator), sigmas[0])
        noisy = langevin.annealed(score, noisy, sigmas, steps=steps or c.langevin_steps,
                                  step_size=step_size or c.langevin_step_size, impose=impose,
                                  generator=generator, progress=progress)
        # each subpixel from its posterior given the noisy image at the last level, all at once
        level = len(sigmas)
        levels = torch.full((len(noisy),), level, device=noisy.device)
        log_pmf = self.likelihood.outcome_log_probs(self.params(noisy, y, levels))  # (B, C, K, H, W)
        log_post = log_pmf + normal_log_prob(noisy.unsqueeze(2), self.values.view(1, 1, -1, 1, 1),
                                             2 * math.log(sigmas[-1]))
        drawn = self.from_outcomes(sample_categorical(log_post, 2, generator).squeeze(2)).to(x.dtype)
        return torch.where(todo, drawn, x)  # known pixels (todo false) exactly as given

    def restore(self, known: KnownView, *, generator: torch.Generator | None = None, sampler: str | None = None,
                steps: int | None = None, step_size: float | None = None, progress: bool = False) -> Tensor:
        """Completion and restoration: the image given a known view of it, in the data representation.
        Known pixels that all come before the unknown ones in raster order (the top of the image
        given) are completed exactly by the sequential (or cached) sampler; any other mask, a
        low-resolution or a grey image by Langevin (default whenever the model has noise levels)."""
        n = len(known.y)
        y = self.labels(None, n, generator)
        if isinstance(known, Inpaint):
            C, H, W = self.spec.shape
            if known.y.shape[1:] != torch.Size(self.spec.shape) or known.mask.shape[-2:] != (H, W) \
                    or known.mask.shape[1] not in (1, C):
                raise DgmError(f"the known image and mask must be {tuple(self.spec.shape)} like the model's images, "
                               f"got {tuple(known.y.shape[1:])} and {tuple(known.mask.shape[1:])}")
            mask = known.mask.expand(n, C, H, W)  # true where known
            prefix = is_raster_prefix(mask)
            if sampler is None:
                sampler = self.default_sampler if prefix or not self.config.noise_levels else "langevin"
            if sampler != "langevin" and not prefix:
                raise DgmError(f"the {sampler} sampler completes an image whose known pixels all come first in raster "
                               f"order (the top given); for any other mask use --sampler langevin"
                               + ("" if self.config.noise_levels else " (train with --set model.noise_levels=10)"))
            y0 = known.y.to(self.device)
            x = torch.where(mask, y0, self.blank(n)[0].to(y0.dtype))
            return self.generate(x, ~mask, y, sampler=sampler, generator=generator, steps=steps,
                                 step_size=step_size, progress=progress,
                                 view=known if sampler == "langevin" else None)
        return self.generate(*self.blank(n), y, sampler=sampler or "langevin", generator=generator, steps=steps,
                             step_size=step_size, progress=progress, view=known)


def is_raster_prefix(known: Tensor) -> bool:
    """Whether, in every image of ``known`` ``(B, C, H, W)`` (true where known), the known subpixels
    all come before the unknown ones in raster order, channel innermost."""
    flat = known.permute(0, 2, 3, 1).flatten(1).long()  # (B, D) in the model's order
    return bool((flat[:, 1:] <= flat[:, :-1]).all())


def view_on_signed_scale(view: KnownView, model: PixelModel) -> KnownView:
    """The same view with its known values mapped from the data representation to the [-1, 1]
    scale of the network (views are means or selections of pixels, so the affine map commutes)."""
    import copy

    signed = copy.copy(view)
    y = view.y
    rep = model.spec.representation
    if rep in BINARY_REPRESENTATIONS:
        signed.y = 2 * y.float() - 1
    elif rep == "levels":
        signed.y = 2 * y.float() / (model.spec.levels - 1) - 1
    elif rep == "unit":
        signed.y = 2 * y - 1
    return signed


# --- the models: a network each ---------------------------------------------------------------------
@dataclass
class PixelCNNConfig(PixelConfig):
    """Settings of :class:`PixelCNN` (``--set model.KEY=VALUE``)."""

    width: PositiveInt = 64  # h: features of the residual blocks (2h between them); rounded up to a multiple of C
    layers: PositiveInt = 7  # residual blocks after the 7x7 mask-A convolution (the paper's 15 on CIFAR-10)


@register
class PixelCNN(PixelModel):
    """PixelCNN: masked convolutions, mask A then residual blocks of mask B (van den Oord et al.
    2016, arXiv:1601.06759, section 3.5). Its receptive field has a blind spot above and to the
    right of each pixel, which the Gated PixelCNN removes.

    Example:
        >>> data = dgm.data.load("fashion-mnist", representation="binary-dynamic")
        >>> model = dgm.create("pixelcnn", data.spec, width=32, layers=5)
        >>> model.log_prob(data.tensors(8).x)  # exact, nats, (8,)
    """

    name = "pixelcnn"
    Config = PixelCNNConfig
    description = "PixelCNN: masked convolutions (A/B masks), exact NLL, sequential or Langevin sampling"

    def build_network(self, channels: int, out_channels: int, condition_dim: int) -> nn.Module:
        from dgm.nn.pixelcnn import PixelCNNNetwork

        c = self.config
        return PixelCNNNetwork(channels, out_channels, width=self.features(c.width), layers=c.layers,
                               condition_dim=condition_dim)


@dataclass
class GatedPixelCNNConfig(PixelConfig):
    """Settings of :class:`GatedPixelCNN` (``--set model.KEY=VALUE``)."""

    width: PositiveInt = 64  # features of the vertical and horizontal stacks; rounded up to a multiple of C
    layers: PositiveInt = 10  # gated layers (the paper's 20 on CIFAR-10)
    kernel_size: PositiveInt = 5  # kernel of the stacks (odd)


@register
class GatedPixelCNN(PixelModel):
    """Gated PixelCNN: vertical and horizontal stacks with no blind spot, gated activations
    tanh(W_f * x + V_f h) * sigmoid(W_g * x + V_g h) and class conditioning (van den Oord et al.
    2016, "Conditional Image Generation with PixelCNN Decoders", arXiv:1606.05328, eqs. 2-4).

    Example:
        >>> data = dgm.data.load("fashion-mnist")
        >>> model = dgm.create("gated-pixelcnn", data.spec, conditional=True)
        >>> model.sample(4, condition=7)  # sneakers, (4, 1, 28, 28) in [0, 1]
    """

    name = "gated-pixelcnn"
    Config = GatedPixelCNNConfig
    description = "Gated PixelCNN: vertical/horizontal stacks, no blind spot, class-conditional; exact NLL"

    def build_network(self, channels: int, out_channels: int, condition_dim: int) -> nn.Module:
        from dgm.nn.pixelcnn import GatedPixelCNNNetwork

        c = self.config
        if c.kernel_size % 2 == 0:
            raise DgmError(f"model.kernel_size must be odd, got {c.kernel_size}")
        return GatedPixelCNNNetwork(channels, out_channels, width=self.features(c.width), layers=c.layers,
                                    kernel_size=c.kernel_size, condition_dim=condition_dim)


@dataclass
class PixelRNNConfig(PixelConfig):
    """Settings of :class:`PixelRNN` (``--set model.KEY=VALUE``)."""

    likelihood: Literal["logistic-mixture", "categorical"] = "categorical"  # PixelRNN's 256-way softmax (section 5.3)
    width: PositiveInt = 64  # hidden units of each Row LSTM layer; rounded up to a multiple of C
    layers: PositiveInt = 3  # Row LSTM layers (the paper's 12 on CIFAR-10)


@register
class PixelRNN(PixelModel):
    """PixelRNN with Row LSTM layers: rows processed top to bottom, each an LSTM over the row above
    with 1x3 input-to-state and state-to-state convolutions (van den Oord et al. 2016,
    arXiv:1601.06759, section 3.1, eq. 3), and a 256-way softmax per subpixel.

    Example:
        >>> data = dgm.data.load("digits")
        >>> model = dgm.create("pixelrnn", data.spec, width=32, layers=2)
        >>> model.log_prob(data.tensors(8).x)  # exact, nats, (8,)
    """

    name = "pixelrnn"
    Config = PixelRNNConfig
    description = "PixelRNN (Row LSTM): an LSTM over rows, 256-way softmax, exact NLL"

    def build_network(self, channels: int, out_channels: int, condition_dim: int) -> nn.Module:
        from dgm.nn.pixelrnn import RowLSTMNetwork

        c = self.config
        return RowLSTMNetwork(channels, out_channels, width=self.features(c.width), layers=c.layers,
                              condition_dim=condition_dim)


@dataclass
class ImageTransformerConfig(PixelConfig):
    """Settings of :class:`ImageTransformer` (``--set model.KEY=VALUE``)."""

    width: PositiveInt = 128  # transformer width
    depth: PositiveInt = 4  # transformer blocks
    heads: PositiveInt = 4  # attention heads (divide width)
    dropout: Fraction = 0.0  # dropout of attention and MLP outputs in training
    max_length: PositiveInt = 1024  # longest subpixel sequence (C H W) the model takes: attention costs its square


@register
class ImageTransformer(PixelModel):
    """Image transformer: causal self-attention over the subpixel sequence, a class token for
    conditioning, and a key-value cache so sampling costs one position per step (Parmar et al.
    2018, "Image Transformer", arXiv:1802.05751, with full causal attention; Chen et al. 2020).

    Example:
        >>> data = dgm.data.load("digits")
        >>> model = dgm.create("image-transformer", data.spec, width=64, depth=2)
        >>> model.sample(4, sampler="cached")  # the same samples as sampler="sequential", faster
    """

    name = "image-transformer"
    Config = ImageTransformerConfig
    description = "image transformer: causal attention over subpixels, KV-cached sampling, exact NLL"
    samplers = (Sampler("cached", "ancestral sampling with a key-value cache: one position per step (exact)"),
                SEQUENTIAL, LANGEVIN)
    takes_first_rows = False

    def build_network(self, channels: int, out_channels: int, condition_dim: int) -> nn.Module:
        from dgm.nn.transformer import ImageTransformerNetwork

        c = self.config
        length = math.prod(self.spec.shape)
        if length > c.max_length:
            C, H, W = self.spec.shape
            raise DgmError(f"{C}x{H}x{W} images are sequences of {length} subpixels, longer than the transformer's "
                           f"{c.max_length}: set --set model.max_length={length} (attention costs grow with its square) "
                           f"or use smaller images")
        if c.width % c.heads:
            raise DgmError(f"model.heads ({c.heads}) must divide model.width ({c.width})")
        return ImageTransformerNetwork(tuple(self.spec.shape), out_channels // channels, width=c.width, depth=c.depth,
                                       heads=c.heads, condition_dim=condition_dim, dropout=c.dropout)

    def ancestral(self, x: Tensor, todo: Tensor, y: Tensor | None, *, sampler: str,
                  generator: torch.Generator | None, progress: bool) -> Tensor:
        if sampler != "cached":
            return super().ancestral(x, todo, y, sampler=sampler, generator=generator, progress=progress)
        C, H, W = self.spec.shape
        x = x.clone()
        h = self.conditioning(y, None, len(x))
        params, cache = self.network.begin(h, len(x))  # (B, P): the first subpixel's
        positions = [(i, j, c) for i in range(H) for j in range(W) for c in range(C)]
        if progress:
            from tqdm.auto import tqdm

            positions = tqdm(positions, desc="cached sampling", unit="subpixel", leave=False)
        for s, (i, j, c) in enumerate(positions):
            # the same draw as the sequential sampler: its likelihood reads channel c's block
            k = self.draw_outcome(params.float().repeat(1, C), c, generator)
            x[:, c, i, j] = torch.where(todo[:, c, i, j], self.from_outcomes(k).to(x.dtype), x[:, c, i, j])
            if s + 1 < len(positions):
                params = self.network.extend(self.to_signed(x[:, c, i, j]), cache)
        return x
