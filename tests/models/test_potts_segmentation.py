"""Bayesian image segmentation with generalised Swendsen-Wang within random-walk MH.

Checks: (1) the per-pixel posterior mode recovers the generated segments (accuracy
above 0.95 at noise 0.3, where thresholding each pixel alone at the midpoints between
the true means gets about 0.9); (2) the continuous sites are right given the labels:
for every draw the conjugate (Normal-InverseGamma) posterior mean of ``mu_k`` and
``sigma2_k`` given that draw's labels is known in closed form, and by the tower rule the
draws of ``mu_k`` minus those conditional means average to zero (within 4 MCSE, ArviZ
ESS of the differences), likewise for ``sigma2_k``.
"""

from __future__ import annotations

import math

import arviz as az
import numpy as np
import pytest

import bayesdl
from bayesdl.models.potts_segmentation import (
    conjugate_posterior,
    potts_segmentation_data,
    segmentation_truth,
)

SIZE, Q, NOISE = 20, 3, 0.3


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see tests/conftest.py)."""


@pytest.fixture(scope="module")
def run():
    return bayesdl.infer("potts_segmentation", method="sw+mh", chains=12, warmup=250, draws=150,
                         seed=3, args={"size": SIZE, "noise": NOISE}, progress=False)


def test_segments_are_recovered(run):
    labels, _, scales = segmentation_truth(SIZE, Q, NOISE)
    z = run.posterior["z"].values
    assert np.issubdtype(z.dtype, np.integer) and z.shape == (12, 150, SIZE, SIZE)
    mode = np.stack([(z == k).mean((0, 1)) for k in range(Q)]).argmax(0)
    accuracy = (mode == labels).mean()
    y = potts_segmentation_data(SIZE, Q, NOISE)["y"]
    pixelwise = (np.clip(np.round(y), 0, Q - 1) == labels).mean()  # no smoothing
    assert accuracy > 0.95, accuracy
    assert accuracy > pixelwise, (accuracy, pixelwise)


@pytest.mark.parametrize("site", ["mu", "sigma2"])
def test_continuous_sites_match_the_conjugate_posterior_given_the_labels(run, site):
    y = potts_segmentation_data(SIZE, Q, NOISE)["y"]
    z = run.posterior["z"].values
    draws = run.posterior[site].values  # [chain, draw, q]
    conditional = np.zeros_like(draws)
    for c in range(z.shape[0]):
        for d in range(z.shape[1]):
            conditional[c, d] = conjugate_posterior(y, z[c, d], Q)[f"{site}_mean"]
    for k in range(Q):
        diff = draws[..., k] - conditional[..., k]
        mcse = diff.std() / math.sqrt(float(az.ess(diff)))
        assert abs(diff.mean()) < 4 * mcse, (site, k, diff.mean(), mcse)
        assert mcse < 0.05 * abs(conditional[..., k]).mean() + 0.02  # the check has power
