"""Shared building blocks: networks (:mod:`dgm.nn.blocks`), observation likelihoods
(:mod:`dgm.nn.likelihoods`) and the Gaussian formulas they share (:mod:`dgm.nn.distributions`)."""
from dgm.nn.blocks import MLP, ConvDecoder, ConvEncoder, ResidualBlock, conv_downsamplings
from dgm.nn.distributions import diagonal_gaussian, normal_kl, normal_log_prob
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
    "Gaussian", "Likelihood", "from_levels", "make_likelihood", "to_levels", "normal_kl", "normal_log_prob",
]
