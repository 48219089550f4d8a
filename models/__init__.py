"""Built-in models. Importing this package registers them all.

    from bayesdl.models import REGISTRY, get_builtin
"""

from bayesdl.models import eight_schools, posteriordb_models, regression  # noqa: F401
from bayesdl.models.registry import REGISTRY, BuiltinModel, get_builtin, register

__all__ = ["REGISTRY", "BuiltinModel", "get_builtin", "register"]
