"""Distribution-preserving lossy compression (DPLC): a quantised Wasserstein autoencoder whose
decoder is trained as a WGAN-GP generator.

Tschannen, Agustsson & Lucic 2018, "Deep Generative Models for Distribution-Preserving Lossy
Compression", NeurIPS, arXiv:1805.11057. An encoder E maps x to a code in [-1, 1]^m, a scalar
quantiser B rounds each of its m = ``code_dim`` coordinates to one of L = ``levels`` evenly spaced
values, and a generator G decodes. The code is stored with a fixed-length code of

    R = m log2 L   bits per image                                              (the rate)

The problem is to minimise the distortion E d(X, G(B(E(X)))) under the constraint that the
reconstructions G(B(E(X))) follow the data distribution P_X. With a prior P_Z on codes and E(X)
constrained to follow P_Z, G(B(E(X))) follows G(B(Z)), so the constraint becomes one on a
generative model; the paper relaxes both constraints into penalties ("Wasserstein++", a WGAN with a
WAE)::

    min_{E, G}  E d(X, G(B(E(X))))  +  lambda W_1(P_X, P_G)  +  lambda' MMD(P_Z, P_{E(X)})

    W_1(P_X, P_G) = max_{||f||_L <= 1}  E f(X) - E f(X^),   X^ ~ P_G = gamma P_{G(B(Z))} + (1 - gamma) P_{G(B(E(X)))}

with the critic f trained by WGAN-GP (Gulrajani et al. 2017, arXiv:1704.00028, eq. 3; the shared
:func:`dgm.models.gan.gradient_penalty`) and the MMD with the inverse multiquadratics kernel
k(u, v) = C / (C + ||u - v||^2), C = 2 m sigma_Z^2 (WAE, Tolstikhin et al. 2018, arXiv:1711.01558,
Algorithm 2). Here d is the squared error summed over pixels, P_Z is uniform on [-1, 1]^m (a tanh
encoder), gradients pass the quantiser straight through, and ``sample`` decodes B(Z), Z ~ P_Z: the
decoder at zero rate. ``adversarial=False`` is the plain autoencoder baseline (distortion only, no
critic, no MMD): the comparison the paper draws against.

Not checked against the paper's text (the search tool gave its abstract and introduction only): the
exact mixture weight gamma and the weights lambda, lambda', the prior P_Z and the quantiser's
gradient; those here are the WAE and WGAN-GP defaults and the module's own choices. The authors' code
(mitscha/dplc) departs from this one-stage form: a generator trained first and frozen while the encoder
and a learned mapping are fitted, distortion as the square root of the batch MSE, a 7-scale MMD, random
blends as the critic's fakes, the adversarial loss on reconstructions without gradient into the encoder,
a soft quantiser without tanh; see docs/benchmarks.md for what that means for our numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import torch
from torch import Tensor, nn

from dgm.data.core import Batch, DataSpec
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel, Loss, Phase, Progress, capability, rand, register
from dgm.models.gan import critic_loss, generator_loss, gradient_penalty
from dgm.models.refusals import refuse_all_but_images
from dgm.nn import ConvDecoder, ConvEncoder
from dgm.nn.adversarial import DCGANDiscriminator
from dgm.settings import Fraction, NonNegativeFloat, PositiveInt, Range

#: why DPLC refuses token sequences and point sets
PADDING_REASON = "its encoder, generator and critic see fixed-size images, so they would learn the padding as data"
#: phase names: the critic, and the encoder with the generator
CRITIC, AUTOENCODER = "critic", "autoencoder"
#: the variance of U[-1, 1], the prior of each code coordinate (the IMQ kernel's scale)
PRIOR_VARIANCE = 1 / 3


@dataclass
class DPLCConfig:
    """Settings of :class:`DPLC` (``--set model.KEY=VALUE``)."""

    code_dim: PositiveInt = 8  # m, coordinates of the code
    levels: Annotated[int, Range(2)] = 4  # L, quantisation levels per coordinate: rate m log2 L bits
    width: PositiveInt = 32  # conv channels of E and G at full resolution
    critic_width: PositiveInt = 32  # DCGAN channels of the critic
    adversarial: bool = True  # DPLC; False: the plain autoencoder baseline (distortion only, no critic)
    wasserstein_weight: NonNegativeFloat = 10.0  # lambda of W_1(P_X, P_G) (d is a per-image sum of squares)
    mmd_weight: NonNegativeFloat = 100.0  # lambda' of MMD(P_Z, P_E(X)) (WAE)
    prior_share: Fraction = 0.5  # gamma: share of the critic's fakes decoded from prior codes B(Z)
    gradient_penalty: NonNegativeFloat = 10.0  # WGAN-GP's lambda on the critic
    critic_steps: PositiveInt = 5  # critic steps per autoencoder step (WGAN-GP's n_critic)


def imq_mmd(u: Tensor, v: Tensor, scale: float) -> Tensor:
    """The unbiased estimate of MMD^2 between samples ``u`` ``(n, m)`` and ``v`` ``(n, m)`` with the
    kernel k(a, b) = scale / (scale + ||a - b||^2) (WAE, Algorithm 2): the two within-sample means
    without their diagonals, less twice the cross mean."""
    n = len(u)
    def k(a: Tensor, b: Tensor) -> Tensor:
        return scale / (scale + torch.cdist(a, b).pow(2))
    off = 1 - torch.eye(n, device=u.device, dtype=u.dtype)
    within = ((k(u, u) + k(v, v)) * off).sum() / (n * (n - 1))
    return within - 2 * k(u, v).mean()


class ScalarQuantizer(nn.Module):
    """B: each coordinate of a code in [-1, 1] to the nearest of L levels -1 + 2 j / (L - 1), j = 0..L-1.
    :meth:`symbols` gives the indices j, :meth:`values` their levels; :meth:`forward` rounds with a
    straight-through gradient (the rounding's value, the identity's gradient)."""

    def __init__(self, levels: int) -> None:
        super().__init__()
        self.levels = levels

    def symbols(self, code: Tensor) -> Tensor:
        return ((code.clamp(-1, 1) + 1) / 2 * (self.levels - 1)).round().long()

    def values(self, symbols: Tensor) -> Tensor:
        return symbols.float() * (2 / (self.levels - 1)) - 1

    def forward(self, code: Tensor) -> Tensor:
        return code + (self.values(self.symbols(code)).to(code.dtype) - code).detach()


@register
class DPLC(GenerativeModel):
    """Distribution-preserving lossy compression (module docstring).

    Example:
        >>> data = dgm.data.load("fashion-mnist")
        >>> model = dgm.create("dplc", data.spec, code_dim=8, levels=4)        # 16 bits per image
        >>> symbols = model.quantize(data.tensors(4).x)                         # (4, 8) int64 in 0..3
        >>> model.dequantize(symbols)                                           # (4, 1, 28, 28)
    """

    name = "dplc"
    Config = DPLCConfig
    description = ("distribution-preserving lossy compression: a quantised WAE encoder and a WGAN-GP generator "
                   "(Tschannen et al. 2018); adversarial=false is the plain autoencoder")

    @classmethod
    def refuse(cls, spec: DataSpec) -> None:
        refuse_all_but_images(cls.name, spec, PADDING_REASON, "compresses images")

    @classmethod
    def default_representation(cls, config: DPLCConfig, spec: DataSpec) -> str:
        cls.refuse(spec)
        return "signed"  # images in [-1, 1], the range of G's tanh

    def __init__(self, config: DPLCConfig, spec: DataSpec) -> None:
        self.refuse(spec)
        super().__init__(config, spec)
        if spec.representation == "levels":
            raise DgmError("DPLC decodes continuous images and cannot train on integer levels: use "
                           "--set data.representation=signed (the default)")
        c = config
        self.encoder = ConvEncoder(spec.shape, c.code_dim, width=c.width)
        self.quantizer = ScalarQuantizer(c.levels)
        self.generator = ConvDecoder(c.code_dim, spec.shape, width=c.width)
        if c.adversarial:  # the baseline has no critic at all
            self.critic_body = DCGANDiscriminator(spec.shape, width=c.critic_width)
            # E f(X) - E f(X^) does not change when f shifts by a constant: a Wasserstein critic has no bias
            self.critic_head = nn.Linear(self.critic_body.out_features, 1, bias=False)

    @property
    def has_critic(self) -> bool:
        return self.config.adversarial

    @property
    def rate_bits(self) -> float:
        """R = m log2 L, the bits of each image's code."""
        return self.config.code_dim * math.log2(self.config.levels)

    # --- the networks -----------------------------------------------------------------------------
    def code(self, x: Tensor) -> Tensor:
        """E(x) in [-1, 1]^m, ``(B, code_dim)``."""
        return torch.tanh(self.encoder(x.float()))

    def generate(self, code: Tensor) -> Tensor:
        """G(code) in [-1, 1] (the ``signed`` images; [0, 1] for ``unit`` data), ``(B, *spec.shape)``."""
        x = torch.tanh(self.generator(code))
        return x if self.spec.representation == "signed" else (x + 1) / 2

    def critic(self, x: Tensor) -> Tensor:
        """f(x), one score per image in float32, ``(B,)``."""
        return self.critic_head(self.critic_body(x)).squeeze(-1).float()

    def prior_codes(self, n: int, *, generator: torch.Generator | None = None, like: Tensor | None = None) -> Tensor:
        """Z ~ U[-1, 1]^m, ``(n, code_dim)``."""
        like = like if like is not None else next(self.parameters())
        return 2 * rand((n, self.config.code_dim), like=like, generator=generator) - 1

    # --- training ---------------------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        c = self.config
        autoencoder = [*self.encoder.parameters(), *self.generator.parameters()]
        if not c.adversarial:
            return [Phase(AUTOENCODER, autoencoder)]
        critic = [*self.critic_body.parameters(), *self.critic_head.parameters()]
        # WGAN-GP's Adam betas (0, 0.9) for both players (Gulrajani et al. 2017, Algorithm 1)
        return [Phase(CRITIC, critic, steps=c.critic_steps, betas=(0.0, 0.9)),
                Phase(AUTOENCODER, autoencoder, betas=(0.0, 0.9))]

    def fakes(self, codes: Tensor, *, generator: torch.Generator | None) -> Tensor:
        """X^ from P_G: each example decoded from its quantised code B(E(x)) or, with probability gamma,
        from a quantised prior code B(Z), ``(B, *spec.shape)``."""
        prior = self.prior_codes(len(codes), generator=generator, like=codes)
        from_prior = rand((len(codes), 1), like=codes, generator=generator) < self.config.prior_share
        return self.generate(self.quantizer(torch.where(from_prior, prior, codes)))

    def loss(self, batch: Batch, phase: str, progress: Progress) -> Loss:
        c, g = self.config, progress.generator
        x = batch.x.float()
        if phase == CRITIC:
            with torch.no_grad():  # the critic's step moves the critic alone
                fake = self.fakes(self.code(x), generator=g)
            real_score, fake_score = self.critic(x), self.critic(fake)
            loss = critic_loss("wasserstein", real_score, fake_score)
            metrics = {"wasserstein": -loss.detach()}
            if c.gradient_penalty > 0:
                penalty = gradient_penalty(self.critic, (x,), (fake,), g)
                loss = loss + c.gradient_penalty * penalty
                metrics["gradient_penalty"] = penalty
            return Loss(loss, metrics)
        if phase != AUTOENCODER:
            raise ValueError(f"unknown phase {phase!r}")
        codes = self.code(x)
        distortion = (self.generate(self.quantizer(codes)) - x).pow(2).flatten(1).sum(1).mean()  # E d(X, X^)
        metrics = {"distortion": distortion}
        loss = distortion
        if c.adversarial:
            adversarial = generator_loss("wasserstein", self.critic(self.fakes(codes, generator=g)))
            mmd = imq_mmd(codes, self.prior_codes(len(codes), generator=g, like=codes),
                          2 * c.code_dim * PRIOR_VARIANCE)
            loss = loss + c.wasserstein_weight * adversarial + c.mmd_weight * mmd
            metrics |= {"generator": adversarial, "mmd": mmd}
        return Loss(loss, metrics)

    # --- compression: symbols, codes, images --------------------------------------------------------
    @capability
    def quantize(self, x: Tensor) -> Tensor:
        """The level index of each code coordinate, ``(B, code_dim)`` int64 in 0..levels-1: what a coder stores."""
        return self.quantizer.symbols(self.code(x))

    @capability
    def dequantize(self, symbols: Tensor) -> Tensor:
        """The images ``(B, *spec.shape)`` G decodes from level indices ``(B, code_dim)``."""
        symbols = torch.as_tensor(symbols, device=self.device)
        if symbols.dim() != 2 or symbols.shape[1] != self.config.code_dim:
            raise DgmError(f"symbols must be (B, {self.config.code_dim}) level indices, got shape {tuple(symbols.shape)}")
        if symbols.numel() and (symbols.min() < 0 or symbols.max() >= self.config.levels):
            raise DgmError(f"symbols must be level indices in 0..{self.config.levels - 1}")
        return self.generate(self.quantizer.values(symbols))

    @capability
    def code_bits(self, x: Tensor) -> Tensor:
        """The rate, m log2 L bits for every image (a fixed-length code), ``(B,)``."""
        return torch.full((len(x),), self.rate_bits, device=x.device)

    def encode(self, x: Tensor) -> Tensor:
        """B(E(x)), the quantised code's values, ``(B, code_dim)``."""
        return self.quantizer.values(self.quantize(x))

    def decode(self, z: Tensor) -> Tensor:
        return self.generate(z)

    def sample(self, n: int, condition: Tensor | None = None, *,
               generator: torch.Generator | None = None) -> Tensor:
        """G(B(Z)), Z ~ U[-1, 1]^m: the decoder at zero rate."""
        if condition is not None:
            raise DgmError("DPLC is unconditional: drop the condition")
        return self.generate(self.quantizer(self.prior_codes(n, generator=generator)))
