"""Inference methods: batched MCMC kernels, Pyro's HMC/NUTS, SVI; all return `Samples`."""

from bayesdl.inference.methods import METHODS, Method, get_method
from bayesdl.inference.model_spec import ModelSpec
from bayesdl.inference.pyro_kernel import PyroKernelAdapter, RandomWalkMH
from bayesdl.inference.samples import Samples
from bayesdl.inference.settings import RunSettings

__all__ = ["METHODS", "Method", "ModelSpec", "PyroKernelAdapter", "RandomWalkMH", "RunSettings",
           "Samples", "get_method"]
