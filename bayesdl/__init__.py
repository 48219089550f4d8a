"""bayesdl: from a Pyro model to a trustworthy ArviZ posterior.

    import bayesdl
    idata = bayesdl.infer("eight_schools", method="nuts")
    idata = bayesdl.load("runs/eight_schools-nuts")
    result = bayesdl.check("gaussian_mle", method="nuts", sbc=100)  # calibration
"""

import warnings

# ArviZ 0.2x announces its 1.0 refactor on import; it is noise for bayesdl's users.
warnings.filterwarnings("ignore", message="\nArviZ is undergoing", category=FutureWarning)

from bayesdl.api import infer, load  # noqa: E402
from bayesdl.calibration import check  # noqa: E402
from bayesdl.errors import BayesdlError  # noqa: E402

__all__ = ["infer", "load", "check", "BayesdlError", "__version__"]
__version__ = "0.1.0"
