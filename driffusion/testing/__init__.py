"""Test oracles and synthetic networks: exact denoisers for data whose posterior is known in
closed form, and cost-controlled networks for speed benchmarks. They let every sampler be
tested against the math, with no model weights."""

from driffusion.testing.networks import (
    BranchedConvStack,
    ConvStackNetwork,
    GuidedOracleNetwork,
    OracleNetwork,
    calibrated_conv_stack,
)
from driffusion.testing.oracle import (
    FlowNoiseLevels,
    GaussianMixtureDenoiser,
    VPNoiseLevels,
    toy_problem,
)

__all__ = [
    "BranchedConvStack",
    "ConvStackNetwork",
    "FlowNoiseLevels",
    "GaussianMixtureDenoiser",
    "GuidedOracleNetwork",
    "OracleNetwork",
    "VPNoiseLevels",
    "calibrated_conv_stack",
    "toy_problem",
]
