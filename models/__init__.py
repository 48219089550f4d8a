"""Built-in models. Importing this package registers them all.

    from bayesdl.models import REGISTRY, get_builtin
"""

import bayesdl.models.char_lstm  # noqa: F401
import bayesdl.models.ising  # noqa: F401
import bayesdl.models.potts_segmentation  # noqa: F401
import bayesdl.models.rbm  # noqa: F401
import bayesdl.models.sequence_regression  # noqa: F401
import bayesdl.models.vae  # noqa: F401
from bayesdl.models import (  # noqa: F401
    eight_schools,
    gp,
    lstm_kalman,
    mle_examples,
    posteriordb_models,
    regression,
    state_space,
)
from bayesdl.models.registry import REGISTRY, BuiltinModel, get_builtin, register

__all__ = ["REGISTRY", "BuiltinModel", "get_builtin", "register"]
