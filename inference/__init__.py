"""Inference methods: batched MCMC kernels, Pyro's HMC/NUTS, SVI; all return `Samples`."""

from bayesdl.inference.elliptical_slice import EllipticalSlice
from bayesdl.inference.independence import IndependenceMH
from bayesdl.inference.mala import MALA
from bayesdl.inference.methods import METHODS, Method, get_method
from bayesdl.inference.model_spec import ModelSpec
from bayesdl.inference.pyro_kernel import PyroKernelAdapter, RandomWalkMH
from bayesdl.inference.samples import Samples
from bayesdl.inference.settings import RunSettings
from bayesdl.inference.slice import Slice
from bayesdl.inference.user_proposal import Proposal, ProposalMH

__all__ = ["METHODS", "Method", "ModelSpec", "PyroKernelAdapter", "RandomWalkMH", "RunSettings",
           "Samples", "get_method"]
__all__ += ["MALA", "EllipticalSlice", "IndependenceMH", "Proposal", "ProposalMH", "Slice"]
