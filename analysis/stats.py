"""The statistics of a curriculum comparison: the paired difference of two strategies over the same seeds with a
Student-t interval, and the smallest difference those seeds could detect (plain functions, tested against
hand-worked values)."""

from __future__ import annotations

import math
import statistics

import numpy as np

from common.errors import UserError


def t_cdf(t: float, dof: int, steps: int = 4000) -> float:
    """Student-t CDF, by Simpson's rule on the density from 0 to |t| (no scipy needed; error far below 1e-8)."""
    log_norm = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)
    x = np.linspace(0.0, abs(t), steps + 1)
    density = np.exp(log_norm - (dof + 1) / 2 * np.log1p(x * x / dof))
    half = float(simpson_weights(steps) @ density) * abs(t) / steps / 3
    return 0.5 + half if t >= 0 else 0.5 - half


def simpson_weights(steps: int) -> np.ndarray:
    """Simpson's rule's weights 1, 4, 2, 4, ..., 4, 1 over `steps` (even) intervals."""
    weights = np.where(np.arange(steps + 1) % 2 == 1, 4.0, 2.0)
    weights[[0, -1]] = 1.0
    return weights


def t_quantile(p: float, dof: int) -> float:
    """The p-quantile of Student's t with `dof` degrees of freedom (bisection on t_cdf), for 0.5 <= p < 1."""
    low, high = 0.0, 1.0
    while t_cdf(high, dof) < p:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if t_cdf(middle, dof) < p else (low, middle)
    return (low + high) / 2


def normal_cdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def paired_t_power(difference: float, sd: float, n: int, level: float = 0.05, steps: int = 2000) -> float:
    """Power of the two-sided paired t-test at `level` with `n` pairs when the true mean difference is `difference`
    and the differences' std is `sd`: P(|T'| > t_c) for the noncentral t T' = (Z + ncp) / S, ncp = difference
    sqrt(n) / sd, S = sqrt(chi2_{n-1} / (n - 1)). Exact up to quadrature: Simpson's rule over S's density."""
    critical = t_quantile(1 - level / 2, n - 1)
    return noncentral_t_tail(difference * math.sqrt(n) / sd, n - 1, critical, steps)


def noncentral_t_tail(ncp: float, dof: int, critical: float, steps: int = 2000) -> float:
    """P(|(Z + ncp) / S| > critical), S = sqrt(chi2_dof / dof): the integral over S's density of the normal tails
    beyond +-critical s, by Simpson's rule."""
    log_norm = math.log(2) + dof / 2 * math.log(dof / 2) - math.lgamma(dof / 2)
    top = 1 + 12 / math.sqrt(dof)  # S concentrates near 1; its density beyond this is below 1e-30
    s = np.linspace(0.0, top, steps + 1)
    density = s ** (dof - 1) * np.exp(log_norm - dof * s * s / 2)  # 0 ** 0 = 1 at dof 1
    tails = [normal_cdf(ncp - critical * x) + normal_cdf(-ncp - critical * x) for x in s]
    return float(simpson_weights(steps) @ (density * np.array(tails))) * top / steps / 3


def minimum_detectable_difference(sd: float, n: int, power: float = 0.8, level: float = 0.05) -> float | None:
    """The smallest true paired difference that `n` seeds detect with probability `power` at `level` (two-sided
    paired t-test), taking the observed std of the differences as the true one. None below two seeds or at sd 0."""
    if n < 2 or not sd > 0:
        return None
    critical = t_quantile(1 - level / 2, n - 1)  # the test's threshold does not depend on the difference: once
    power_at = lambda difference: noncentral_t_tail(difference * math.sqrt(n) / sd, n - 1, critical)  # noqa: E731
    low, high = 0.0, sd
    while power_at(high) < power:
        high *= 2
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if power_at(middle) < power else (low, middle)
    return (low + high) / 2


def paired_difference(values: dict, baseline: dict, confidence: float = 0.95) -> dict:
    """Mean of `values[s] - baseline[s]` over the seeds both have, with a two-sided Student-t interval (n - 1 dof):
    `mean +- t_{(1+c)/2, n-1} * sd / sqrt(n)`, and the minimum detectable difference of those seeds (80% power, at
    level 1 - c). With one common seed there is no interval (None)."""
    seeds = sorted(set(values) & set(baseline))
    if not seeds:
        raise UserError("no seed is shared with the baseline; run both strategies with the same --seeds.")
    differences = [values[s] - baseline[s] for s in seeds]
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return {"mean": mean, "low": None, "high": None, "n": 1, "seeds": seeds, "detectable": None}
    sd, n = statistics.stdev(differences), len(differences)
    half = t_quantile((1 + confidence) / 2, n - 1) * sd / math.sqrt(n)
    detectable = minimum_detectable_difference(sd, n, level=1 - confidence)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n, "seeds": seeds, "detectable": detectable}
