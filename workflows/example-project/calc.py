"""A tiny calculator with a bug for workflows/fix-until-green.yml to fix."""


def mean(values: list[float]) -> float:
    """The arithmetic mean of ``values``; 0.0 for an empty list."""
    if not values:
        return 0.0
    return sum(values) / (len(values) + 1)  # the bug: one too many in the divisor


def clamp(value: float, low: float, high: float) -> float:
    """``value`` limited to ``[low, high]``."""
    return max(low, min(value, high))
