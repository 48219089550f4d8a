"""Stan's windowed warm-up schedule: fast buffer, doubling slow windows, fast buffer.

Positions are collected in the slow windows to estimate the scale of the posterior;
step sizes adapt throughout. The rule for short warm-ups (15% / 75% / 10%) is Stan's.
"""

from __future__ import annotations


def slow_windows(num_warmup: int, init_buffer: int = 75, term_buffer: int = 50,
                 base_window: int = 25) -> list[tuple[int, int]]:
    """``(start, end)`` iteration ranges (0-based, end exclusive) of the slow windows."""
    if num_warmup < 20:
        return []
    if init_buffer + base_window + term_buffer > num_warmup:
        init_buffer = int(0.15 * num_warmup)
        term_buffer = int(0.1 * num_warmup)
        base_window = num_warmup - init_buffer - term_buffer
    windows = []
    start, width = init_buffer, base_window
    last = num_warmup - term_buffer
    while start < last:
        end = start + width
        if end + 2 * width > last:  # the next window would not fit: stretch this one
            end = last
        windows.append((start, end))
        start, width = end, 2 * width
    return windows
