"""Small statistics over lists of samples (stdlib only)."""

import math
import statistics


def percentile(values, q):
    """The q-th percentile (0..100) with linear interpolation.

    Same definition as numpy.percentile's default ("linear"), so figures
    can be re-derived from the JSON with any tool.

    :returns: float, or None for an empty list.
    """
    if not values:
        return None
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summary(values):
    """n, median, p95, mean, min and max of values (same unit as values).

    :returns: dict; the figures are None when values is empty.
    """
    values = list(values)
    if not values:
        return {'n': 0, 'median': None, 'p95': None, 'mean': None,
                'min': None, 'max': None}
    return {'n': len(values),
            'median': statistics.median(values),
            'p95': percentile(values, 95),
            'mean': statistics.fmean(values),
            'min': min(values),
            'max': max(values)}


def ratio(a, b):
    """a / b, or None when either is missing or b is zero."""
    if a is None or b in (None, 0):
        return None
    return a / b
