"""A user proposal for ``--method mh``: a drifting Gaussian random walk, asymmetric, so
its ``log_prob`` gives the Hastings correction.

    bayesdl infer linear_regression --arg noise=0.5 --method mh --opt proposal=examples/my_proposal.py:drift
"""

from bayesdl.inference.metropolis import PROPOSAL_STREAM
from bayesdl.inference.user_proposal import Proposal


def sample(rng, step, x):
    """Proposals ``[C, D]`` from positions ``x [C, D]``; random numbers from ``rng``."""
    return x + 0.05 + 0.1 * rng.normal(step, PROPOSAL_STREAM, x.shape[1:], x.dtype)


def log_prob(to, from_):
    """``log q(to | from_)`` per chain, up to a constant."""
    return -0.5 * (((to - from_ - 0.05) / 0.1) ** 2).sum(-1)


drift = Proposal(sample, log_prob)
