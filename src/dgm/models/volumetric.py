"""A VAE of voxel volumes, trained on the volumes or from 2-D views of them alone.

Rezende, Eslami, Mohamed, Battaglia, Jaderberg & Heess 2016, "Unsupervised Learning of 3D Structure
from Images", NeurIPS, arXiv:1607.00662. A latent code ``z ~ N(0, I)`` is decoded by 3-D transposed
convolutions (:class:`~dgm.nn.volumes.GridDecoder`) into the logits ``l`` of independent Bernoulli
voxels, ``p(V | z) = prod_v Bernoulli(V_v; sigmoid(l_v))`` (their eq. 1 with a volumetric ``h``).
The model is observed in one of two ways (``observe``):

* ``volume``: the volume itself, the ELBO of :mod:`dgm.models.vae` (AEVB eq. 3) and the IWAE bound
  (Burda et al. 2016, eq. 8) of ``log p(V)``, with ``q(z | V)`` read by a 3-D convolutional encoder.
* ``views``: only silhouettes ``x_a`` of the volume seen from the azimuths ``a`` of ``views`` (degrees,
  at ``elevation``), the paper's "volume from images" setting (their section 3.3 with a fixed camera
  and a projection instead of OpenGL): ``q(z | x_0)`` reads the **first view only**, and the decoder's
  volume is projected to every view and scored there,

      p(x_a | z) = prod_pixels Bernoulli(x_a; 1 - exp(-S_a)),  S_a = sum_d softplus(l)(R_a p)    (1)

  where ``softplus(l) = -log(1 - sigmoid(l))`` is the density whose absorption (eq. 2 of
  :mod:`dgm.data.projection`) is the probability that a ray meets an occupied voxel (exact for the
  axis-aligned view, where it is ``1 - prod_d (1 - p_d)``; trilinear resampling ``R_a`` otherwise).
  A silhouette of the data is ``x_a = 1[1 - prod_d (1 - V(R_a p)_d) > 1/2]``. The bounds are then bounds on
  ``log p(x_views)``, not on ``log p(V)``: this configuration withholds ``elbo`` and ``iwae_bound``
  from evaluation (they would be read as a likelihood of the volumes), while ``encode``,
  ``reconstruct`` (the shape inferred from the first view) and :meth:`VoxelVAE.shape_from_view` stay.

Samples are volumes of occupancy probabilities (``sample_mean``) or 0/1 draws; the report turns
them: each row is one volume seen from eight azimuths.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from torch import Tensor, nn

from dgm.data.core import DataSpec
from dgm.data.voxels import TURN, turning
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel, capability, register
from dgm.models.vae import VAE, VAEConfig, likelihood_of
from dgm.nn import MLP, make_likelihood
from dgm.data import projection
from dgm.nn.distributions import diagonal_gaussian
from dgm.nn.volumes import GridDecoder, GridEncoder
from dgm.settings import PositiveInt, Range

Angle = Annotated[float, Range(-360, 360)]  # degrees
EMPTY_LOGIT = -3.0  # initial voxel logit: sigmoid(-3) = 4.7%


@dataclass
class VoxelVAEConfig(VAEConfig):
    """Settings of :class:`VoxelVAE` (``--set model.KEY=VALUE``); those of :class:`VAEConfig` apply."""

    latent_dim: PositiveInt = 16  # dimension of z
    network: Literal["mlp", "conv"] = "conv"  # conv: 3-D decoder (and a 3-D or 2-D encoder); mlp: flat MLPs
    hidden: tuple[PositiveInt, ...] = (256,)  # mlp: hidden widths of the encoder; the decoder mirrors them
    width: PositiveInt = 16  # conv channels at full resolution (doubled at each halving)
    observe: Literal["volume", "views"] = "volume"  # train on the volumes, or on silhouettes of them only
    views: tuple[Angle, ...] = (0.0, 60.0, 120.0)  # observe=views: azimuths (degrees); the encoder reads the first
    elevation: Angle = 20.0  # observe=views: the camera's elevation (degrees) in every view


@register
class VoxelVAE(VAE):
    """A VAE with a volumetric decoder, observed through the volume or through 2-D silhouettes.

    Example:
        >>> data = dgm.data.load("voxels", representation="binary-dynamic")
        >>> model = dgm.create("voxel-vae", data.spec, observe="views")
        >>> shapes = model.shape_from_view(model.views(data.tensors(4).x)[:, :1])  # (4, 1, 16, 16, 16)
    """

    name = "voxel-vae"
    Config = VoxelVAEConfig
    description = ("VAE of voxel volumes with a 3-D conv decoder, trained on volumes or on 2-D silhouettes "
                   "only (Rezende et al. 2016)")

    def __init__(self, config: VoxelVAEConfig, spec: DataSpec) -> None:
        GenerativeModel.__init__(self, config, spec)  # the VAE's networks are built here, for volumes
        if spec.kind != "volume":
            raise DgmError(f"model {self.name!r} models voxel volumes, but {spec.name!r} holds {spec.kind} data: "
                           f"use --data voxels")
        if config.iwae_k > 1 and (config.beta != 1 or config.free_bits or config.kl_warmup_steps):
            raise DgmError("the IWAE objective (iwae_k > 1) is a bound and takes no beta, free_bits or "
                           "kl_warmup_steps: set those back to their defaults")
        if config.observe == "views" and config.likelihood != "bernoulli":
            raise DgmError("observe=views scores silhouettes with a Bernoulli likelihood: drop model.likelihood")
        if config.observe == "views" and not config.views:
            raise DgmError("observe=views needs at least one azimuth in model.views, e.g. model.views=[0,60,120]")
        self.likelihood = likelihood_of(config, spec)
        side = spec.shape[-1]
        # what the encoder reads: the volume, or its first view (B, 1, side, side)
        seen = spec.shape if config.observe == "volume" else (1, side, side)
        d, out_shape = config.latent_dim, self.likelihood.params_shape
        if config.network == "conv":
            self.encoder = GridEncoder(seen, 2 * d, width=config.width)
            self.decoder = GridDecoder(d, out_shape, width=config.width)
        else:
            self.encoder = nn.Sequential(nn.Flatten(), MLP(math.prod(seen), config.hidden, 2 * d))
            self.decoder = nn.Sequential(MLP(d, tuple(reversed(config.hidden)), math.prod(out_shape)),
                                         nn.Unflatten(1, out_shape))
        if config.likelihood == "bernoulli":  # start near the data's ~4% occupancy, not at p = 1/2 everywhere:
            # a half-full volume absorbs every ray, so each silhouette would start all lit
            last = [m for m in self.decoder.modules() if isinstance(m, (nn.Linear, nn.ConvTranspose3d))][-1]
            nn.init.constant_(last.bias, EMPTY_LOGIT)
        # the silhouettes as data of their own: one channel per view (B, V, side, side), 0/1
        self.view_likelihood = make_likelihood(
            "bernoulli", DataSpec(f"{spec.name} views", (len(config.views), side, side), "binary-static", levels=2))

    def withheld_capabilities(self) -> dict[str, str]:
        if self.config.observe == "views":
            why = "with observe=views the bound is of the 2-D silhouettes, not of the volumes"
            return {"elbo": why, "iwae_bound": why}
        return {"shape_from_view": "with observe=volume the encoder reads volumes: train with model.observe=views"}

    @property
    def elbo_description(self) -> str:
        return "ELBO, 1 sample" if self.config.observe == "volume" else "ELBO of the silhouettes, 1 sample"

    # --- the views ------------------------------------------------------------------------------
    def angles(self) -> list[tuple[float, float]]:
        """``(azimuth, elevation)`` in radians of each view."""
        e = math.radians(self.config.elevation)
        return [(a, e) for a in projection.degrees(self.config.views)]

    def views(self, x: Tensor, first: bool = False) -> Tensor:
        """Silhouettes of volumes ``x`` ``(B, 1, D, H, W)`` in [0, 1]: ``(B, V, H, W)`` in {0, 1}
        (``first``: the encoder's view only, ``(B, 1, H, W)``)."""
        angles = self.angles()[:1] if first else self.angles()
        lit = [projection.occupancy(projection.turned(x.float(), a, e)) for a, e in angles]  # each (B, 1, H, W)
        return (torch.cat(lit, 1) > 0.5).to(x.dtype if x.is_floating_point() else torch.float32)

    def view_logits(self, params: Tensor) -> Tensor:
        """The log-odds of every silhouette pixel under eq. (1) for voxel logits ``params``
        ``(B, 1, D, H, W)``: ``(B, V, H, W)``."""
        density = nn.functional.softplus(params)  # -log(1 - p): the absorption of eq. (1)
        depths = [projection.optical_depth(projection.turned(density, a, e)) for a, e in self.angles()]
        return projection.absorption_logits(torch.cat(depths, 1))

    # --- the two observation modes (everything else is the VAE's) -------------------------------
    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.config.observe == "views":
            return self.posterior_of_view(self.views(x, first=True))
        return super().posterior(x)

    def posterior_of_view(self, view: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z | x_0) for first-view silhouettes ``view`` ``(B, 1, H, W)``."""
        return diagonal_gaussian(self.encoder(view.float()))

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(V | z) (``observe=volume``) or log p(x_views | z) of eq. (1) (``views``), nats, ``(B,)``."""
        if self.config.observe == "volume":
            return super().log_likelihood(x, z)
        return self.view_likelihood.log_prob(self.view_logits(self.decoder_params(z)), self.views(x))

    @capability
    def shape_from_view(self, view: Tensor) -> Tensor:
        """The volume ``(B, 1, D, H, W)`` of occupancy probabilities inferred from first-view
        silhouettes ``view`` ``(B, 1, H, W)`` (the posterior mean code, decoded)."""
        if self.config.observe != "views":
            raise DgmError("this voxel-vae reads volumes (observe=volume): train one with model.observe=views "
                           "to infer shapes from a view")
        return self.decode(self.posterior_of_view(view)[0])

    # --- figures -----------------------------------------------------------------------------------
    def report_figures(self, *, generator: torch.Generator | None = None) -> list[tuple[str, Tensor, int, str]]:
        z = torch.randn(8, self.config.latent_dim, generator=generator, device=self.device)
        volumes = self.decode(z)  # (8, 1, D, H, W) occupancy probabilities
        return [("Samples, turning", turning(volumes), len(TURN),
                 f"each row is one sampled volume (occupancy probabilities) seen from azimuths "
                 f"{', '.join(f'{a:.0f}' for a in TURN)} degrees at elevation 25, shaded (nearer is brighter)")]

    @property
    def reconstruction_description(self) -> str:
        """What :meth:`reconstruct` reads, for the report's figure of inferred shapes."""
        if self.config.observe == "views":
            return (f"the shape inferred from its silhouette at azimuth {self.config.views[0]:.0f}, "
                    f"elevation {self.config.elevation:.0f} degrees alone (the model never saw a voxel)")
        return "its reconstruction from the volume"

