"""bayesdl: from a Pyro model to a trustworthy ArviZ posterior.

    import bayesdl
    idata = bayesdl.infer("eight_schools", method="nuts")
    idata = bayesdl.load("runs/eight_schools-nuts")
    result = bayesdl.check("gaussian_mle", method="nuts", sbc=100)  # calibration
"""

import warnings

# ArviZ 0.2x announces its 1.0 refactor on import; it is noise for bayesdl's users.
warnings.filterwarnings("ignore", message="\nArviZ is undergoing", category=FutureWarning)

from bayesdl.errors import BayesdlError  # noqa: E402

__all__ = ["infer", "load", "check", "BayesdlError", "__version__"]
__version__ = "0.1.0"

# infer, load and check import torch, Pyro and ArviZ (several seconds); they load at
# first use (PEP 562), so `bayesdl --help` and `import bayesdl.errors` stay instant
_LAZY = {"infer": "bayesdl.api", "load": "bayesdl.api", "check": "bayesdl.calibration"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bayesdl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
