"""Test oracles: exact denoisers for data whose posterior is known in closed form.

They let every sampler be tested against the math, with no model weights.
"""

from driffusion.testing.oracle import FlowNoiseLevels, GaussianMixtureDenoiser, VPNoiseLevels

__all__ = ["FlowNoiseLevels", "GaussianMixtureDenoiser", "VPNoiseLevels"]
