"""Shared building blocks: networks (:mod:`dgm.nn.blocks`) and observation likelihoods
(:mod:`dgm.nn.likelihoods`)."""
from dgm.nn.blocks import MLP, ConvDecoder, ConvEncoder, ResidualBlock, conv_downsamplings
from dgm.nn.likelihoods import (
    LIKELIHOODS,
    Bernoulli,
    Categorical,
    DiscretizedLogistic,
    DiscretizedLogisticMixture,
    Gaussian,
    Likelihood,
    from_levels,
    make_likelihood,
    to_levels,
)

__all__ = [
    "MLP", "ConvDecoder", "ConvEncoder", "ResidualBlock", "conv_downsamplings",
    "LIKELIHOODS", "Bernoulli", "Categorical", "DiscretizedLogistic", "DiscretizedLogisticMixture",
    "Gaussian", "Likelihood", "from_levels", "make_likelihood", "to_levels",
]
