"""bayesdl: from a Pyro model to a trustworthy ArviZ posterior.

    import bayesdl
    idata = bayesdl.infer("eight_schools", method="nuts")
    idata = bayesdl.load("runs/eight_schools-nuts")
"""

from bayesdl.api import infer, load
from bayesdl.errors import BayesdlError

__all__ = ["infer", "load", "BayesdlError", "__version__"]
__version__ = "0.1.0"
