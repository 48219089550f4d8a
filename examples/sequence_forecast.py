"""One-step and many-step probabilistic forecasts with an LSTM and a Bayesian output layer.

    python examples/sequence_forecast.py            # the noisy sine wave
    python examples/sequence_forecast.py nile 10    # the Nile flows, window 10
"""

import sys

import torch

from bayesdl.inference.model_spec import ModelSpec
from bayesdl.inference.svi import SVIOptions, draw_from_guide, fit_svi
from bayesdl.model_plots import forecast_png
from bayesdl.models.sequence_regression import (
                            forecast,
                            get_features,
                            load_series,
                            make_windows,
                            predictive_draws,
                            sequence_regression,
)

series = sys.argv[1] if len(sys.argv) > 1 else "sine"
window = int(sys.argv[2]) if len(sys.argv) > 2 else 20
raw = load_series(series, num_points=400)
values = torch.tensor((raw - raw.mean()) / raw.std(), dtype=torch.float32)
horizon = min(40, len(values) // 5)
history, future = values[:-horizon], values[-horizon:]

x, y = make_windows(history, window)
spec = ModelSpec(sequence_regression, {"x": x, "y": y, "cell": "lstm", "hidden": 16})
fit = fit_svi(spec, SVIOptions(lr=0.02, max_steps=3000), seed=0)
draws = draw_from_guide(spec, fit.guide, 1000)
net = get_features(x, "lstm", 16)

one_step = predictive_draws(net, x, draws)
lo, hi = one_step.quantile(0.05, 0), one_step.quantile(0.95, 0)
print(f"in-sample 90% one-step interval coverage: {((y >= lo) & (y <= hi)).float().mean():.3f}")
paths = forecast(net, history, horizon, draws)
scale = float(raw.std())
print("saved", forecast_png(history * scale + raw.mean(), paths * scale + raw.mean(),
                            f"forecast_{series}.png", truth=future * scale + raw.mean(),
                            title=f"{series}: {horizon}-step forecast, 50% and 90% bands"))
