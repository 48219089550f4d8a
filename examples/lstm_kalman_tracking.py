"""LSTM-Kalman filter (Coskun et al. 2017) on a non-linear tracking task.

    python examples/lstm_kalman_tracking.py      # a few minutes on a laptop CPU

Targets move by a coordinated-turn model (speed and turn rate wander) and their
positions are observed in noise (sd 0.5). Trains the LSTM-KF end to end on 256 tracks,
then compares position RMSE on 128 held-out tracks with a constant-velocity Kalman
filter fitted by maximum likelihood and a bootstrap particle filter that is given the
true dynamics.
"""


from bayesdl.models.lstm_kalman import compare_filters

result = compare_filters(num_train=256, num_test=128, num_steps=50, train_steps=300, hidden=32,
                         particles=5000, seed=0)
print(f"{'filter':<18s} {'RMSE':>6s} {'seconds':>8s}")
for name, rmse in sorted(result.rmse.items(), key=lambda item: item[1]):
    print(f"{name:<18s} {rmse:6.3f} {result.seconds.get(name, 0.0):8.1f}")
