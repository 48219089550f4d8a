"""Eight schools (Rubin 1981; Gelman et al., BDA3 §5.5): a hierarchical normal model.

Non-centred by default (posteriordb's ``eight_schools_noncentered``): ``theta`` is the
deterministic ``mu + tau * theta_trans``. ``--arg centered=true`` samples ``theta``
directly, which shows the funnel that non-centring removes.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist

from bayesdl.data_schema import DataField
from bayesdl.models.registry import register

SCHOOLS = ["Choate", "Deerfield", "Phillips Andover", "Phillips Exeter", "Hotchkiss",
           "Lawrenceville", "St. Paul's", "Mt. Hermon"]


def eight_schools_data() -> dict:
    """The treatment effects and standard errors of Rubin (1981)."""
    return {"J": 8, "y": [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0],
            "sigma": [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]}


@register(
    "eight_schools",
    "hierarchical normal model of 8 SAT coaching effects (--arg centered=true for centred)",
    data=eight_schools_data,
    schema={"J": DataField(kind="size"), "y": DataField(("J",)), "sigma": DataField(("J",))},
    dims={"theta": ["school"], "theta_trans": ["school"], "y": ["school"]},
    coords=lambda data: {"school": SCHOOLS if data["J"] == 8 else list(range(data["J"]))},
)
def eight_schools(J, y, sigma, centered: bool = False):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("school", J):
        if centered:
            theta = pyro.sample("theta", dist.Normal(mu, tau))
        else:
            theta_trans = pyro.sample("theta_trans", dist.Normal(0.0, 1.0))
            theta = pyro.deterministic("theta", mu + tau * theta_trans)
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)
