"""The one converter: `Samples` (+ model and data) -> ``arviz.InferenceData``.

Groups: ``posterior`` (latent and deterministic sites), ``sample_stats`` (ArviZ's
names), ``observed_data``, ``log_likelihood`` (one variable per observed site, so
``az.loo`` works) and, when asked, ``posterior_predictive``. Tensors leave the device
here and only here.
"""

from __future__ import annotations

import warnings
from typing import Any

import arviz as az
import numpy as np
import torch

from bayesdl.inference.model_spec import ModelSpec
from bayesdl.inference.replay import observed_sites, replay
from bayesdl.inference.samples import Samples


def _numpy(tree: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().to("cpu").numpy() for k, v in tree.items()}


def _attr(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, float, str)):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) for v in value):
        return np.asarray(value, dtype=np.int64)
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        return np.asarray(value, dtype=float)
    return None


def to_inference_data(samples: Samples, spec: ModelSpec, predictive: bool = False) -> az.InferenceData:
    """Build the InferenceData of a run with named dims and coords."""
    deterministic, log_likelihood, predictions = replay(
        spec.model, spec.data, samples.draws, predictive=predictive
    )
    posterior = _numpy({**samples.draws, **deterministic})
    observed = _numpy(observed_sites(spec.model, spec.data))
    dims = {k: v for k, v in spec.dims.items()}
    used = {d for names in dims.values() for d in names}
    coords = {k: v for k, v in spec.coords.items() if k in used}
    attrs = {k: a for k, v in samples.info.items() if (a := _attr(v)) is not None}
    attrs["model"] = spec.name
    with warnings.catch_warnings():
        # the arrays are [chain, draw, ...] by construction; ArviZ guesses they are not
        # when there are more chains than draws (ChEES: 1024 chains x 100 draws)
        warnings.filterwarnings("ignore", message="More chains .* than draws")
        idata = az.from_dict(
            posterior=posterior,
            sample_stats=_numpy(samples.stats) or None,
            observed_data=observed or None,
            log_likelihood=_numpy(log_likelihood) or None,
            posterior_predictive=_numpy(predictions) or None,
            dims=_dims_that_fit(dims, posterior, observed, coords),
            coords=coords,
            attrs=attrs,
            posterior_attrs=dict(attrs),  # `attrs` alone does not reach the posterior group
        )
    weighted = samples.info.get("weighted_sample")
    if weighted:  # importance sampling: the weighted draws and their log weights, as drawn
        arrays = _numpy(weighted)
        idata.add_groups(weighted_posterior=az.dict_to_dataset(
            arrays, coords=coords, dims=_dims_that_fit(dims, arrays, observed, coords)))
    return idata


def _dims_that_fit(dims: dict[str, list[str]], posterior: dict[str, np.ndarray],
                   observed: dict[str, np.ndarray], coords: dict[str, list[Any]]) -> dict:
    """Keep a site's dim names only where their number and coords match its shape."""
    out = {}
    for name, names in dims.items():
        if name in posterior:
            shape = posterior[name].shape[2:]
        elif name in observed:
            shape = observed[name].shape
        else:
            continue
        if len(shape) == len(names) and all(
            d not in coords or len(coords[d]) == n for d, n in zip(names, shape, strict=True)
        ):
            out[name] = names
    return out
