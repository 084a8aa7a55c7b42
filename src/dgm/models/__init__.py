"""Models: the shared protocol and registry (``base``) and one module per family.

Importing this package registers every built-in family; a new family is a new module here that
subclasses :class:`GenerativeModel`, decorates it with :func:`register`, and is imported below.
"""
from dgm.models.base import (
    MODELS,
    GenerativeModel,
    Loss,
    Phase,
    Progress,
    Sampler,
    Stage,
    capabilities,
    capability,
    fits_in_closed_form,
    create,
    model_class,
    register,
)
from dgm.models import diffusion, gan, vae  # noqa: F401  (registers "vae", "gan" and its variants, "ddpm")
from dgm.models import autoregressive, dct_transformer, pixel  # noqa: F401  (NADE, MADE, the pixel models, the DCT transformer)
from dgm.models import flows  # noqa: F401  (NICE, RealNVP, Glow, MAF, IAF, spline flows)
from dgm.models import set_flow  # noqa: F401  (registers "set-flow", the exchangeable flow over point sets)
from dgm.models import classical  # noqa: F401  (PPCA, factor analysis, the Gaussian mixture)
from dgm.models import conditional_vae, semisupervised  # noqa: F401  (CVAE, CSVAE; M2, M1+M2, the partially supervised VAE)
from dgm.models import disentangled, ladder_vae, vqvae  # noqa: F401  (beta-TC-VAE, IDVAE; the ladder VAE; VQ-VAE)
from dgm.models import iaf_vae, pixel_vae  # noqa: F401  (VAEs with an IAF posterior, with a PixelCNN decoder)
from dgm.models import language  # noqa: F401  (the LSTM and transformer language models)
from dgm.models import outline_gan  # noqa: F401  (text from a GAN over sentence embeddings)
from dgm.models import sentence_vae  # noqa: F401  (the sentence VAE of Bowman et al. 2016)
from dgm.models import topic_model  # noqa: F401  (ProdLDA, a neural topic model)
from dgm.models import text_to_image  # noqa: F401  (DALL-E: a transformer over caption and image tokens)
from dgm.models import align_draw  # noqa: F401  (alignDRAW: DRAW on a canvas, aligned to the caption's words)
from dgm.models import helmholtz  # noqa: F401  (the DDC Helmholtz machine and reweighted wake-sleep)
from dgm.models import self_labelling_gan  # noqa: F401  (the self-labelling GAN of Watanabe & Favaro 2021)
from dgm.models import knowledge_constraints  # noqa: F401  (learnable knowledge constraints: constrained-vae, -lm)
from dgm.models import volumetric  # noqa: F401  (voxel-vae: 3-D shapes from volumes or 2-D views)
from dgm.models import conv_draw, dplc  # noqa: F401  (convolutional DRAW; distribution-preserving lossy compression)
from dgm.models import wavenet  # noqa: F401  (WaveNet: dilated causal convolutions over mu-law audio)
from dgm.models import handwriting  # noqa: F401  (mdn-rnn: Graves's mixture-density LSTM over pen strokes)

__all__ = ["MODELS", "GenerativeModel", "Loss", "Phase", "Progress", "Sampler", "Stage", "capabilities", "capability",
           "create", "fits_in_closed_form", "model_class", "register"]
