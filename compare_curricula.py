"""Compare curriculum strategies run with several seeds: mean +- std per strategy and the paired difference to a
baseline strategy (the same seeds) with a 95% Student-t interval, as a markdown table, JSON and a figure.

    python compare_curricula.py runs/compare/*-s*/ --baseline random_subset --out runs/compare

A strategy is a run folder name without its `-s<seed>` suffix. Each run contributes the test accuracy of its
best-validation checkpoint (`results.json`: selection on validation, the test split only reported), that of its last
epoch, and its training budget (samples seen, in epochs of the full training set, the RL agent's proxy runs included),
and each paired difference comes with the smallest difference its seeds could detect (80% power, two-sided paired
t-test at the interval's level). `--baseline A,B` pairs every strategy with each of several baselines (one table
each). scripts/compare_curricula.sh launches the runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cli import field, parse_config
from data import load_data
from errors import UserError, run_cli
from evaluate import run_budget
from files import save_json


@dataclass
class Config:
    runs: list = dataclasses.field(
        default_factory=list, metadata={"help": "finished run folders named <strategy>-s<seed>", "nargs": "*"}
    )
    baseline: str = field(
        "random_subset", "the strategy every other one is compared with, seed by seed; several, comma-separated: a "
        "table for each (the figure pairs with the first)",
    )  # fmt: skip
    confidence: float = field(0.95, "coverage of the interval of each paired difference")
    out: str = field("runs/compare", "folder for comparison.md, comparison.json and comparison.png")


# ----------------------------------------------------------------------------------------------------------------------
# Statistics (plain functions, tested against hand-worked values)


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


def compare(groups: dict, baseline: str, confidence: float = 0.95) -> list[dict]:
    """One row per strategy: `groups[name] = {"acc": {seed: test top-1}, "budget": {seed: epochs}}`, optionally
    `"last": {seed: last epoch's test top-1}` (then `last_*` entries pair those too)."""
    if baseline not in groups:
        raise UserError(f"no runs of the baseline {baseline!r} among {sorted(groups)}; pass its run folders too.")
    rows = []
    for name, group in groups.items():
        row = {"strategy": name, "n": len(group["acc"]), "budget": statistics.fmean(group["budget"].values())}
        for prefix, key in (("", "acc"), ("last_", "last")):
            values = group.get(key) or {}
            row[f"{prefix}mean"] = statistics.fmean(values.values()) if values else None
            row[f"{prefix}std"] = statistics.stdev(values.values()) if len(values) > 1 else None
            partner = groups[baseline].get(key) or {}
            paired = name != baseline and values and set(values) & set(partner)
            row[f"{prefix}vs_baseline"] = paired_difference(values, partner, confidence) if paired else None
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# Reading runs, the table and the figure


def read_groups(folders: list[str]) -> dict:
    """`{strategy: {"acc": {seed: acc}, "budget": {seed: epochs}}}` from finished run folders, in the given order."""
    groups, train_sizes = {}, {}
    for folder in map(Path, folders):
        if not (folder / "results.json").is_file():
            raise UserError(f"{folder} is not a finished run (no results.json); rerun it or leave it out.")
        config = json.loads((folder / "config.json").read_text())
        if config["data"] not in train_sizes:
            train_sizes[config["data"]] = len(load_data(config["data"]).train)
        group = groups.setdefault(re.sub(r"-s\d+$", "", folder.name), {"acc": {}, "last": {}, "budget": {}})
        seed, results = config["seed"], json.loads((folder / "results.json").read_text())
        group["acc"][seed] = results["test_acc"]
        if "last_test_acc" in results:  # absent from runs of before it was recorded
            group["last"][seed] = results["last_test_acc"]
        group["budget"][seed] = run_budget(folder, train_sizes[config["data"]])
    return groups


def format_mean(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "—"
    return f"{mean:.2f}{f' ± {std:.2f}' if std is not None else ''}%"


def format_versus(versus: dict | None, baseline: bool) -> tuple[str, str]:
    """(paired difference [interval], detectable difference) cells."""
    if versus is None:
        return ("(baseline)" if baseline else "—"), "—"
    if versus["low"] is None:
        return f"{versus['mean']:+.2f} (one seed: no interval)", "—"
    detectable = f"{versus['detectable']:.2f}" if versus["detectable"] is not None else "—"
    return f"{versus['mean']:+.2f} [{versus['low']:+.2f}, {versus['high']:+.2f}]", detectable


def markdown_table(rows: list[dict], baseline: str, confidence: float) -> str:
    """Test top-1 of the best-validation checkpoint and of the last epoch, each paired with the baseline's."""
    level = f"{confidence:.0%}"
    lines = [
        f"| Strategy | n | Test top-1 (best-val), mean ± std | Last epoch, mean ± std | Budget (epochs of all data) "
        f"| Paired difference to {baseline}, best-val [{level} interval] | Detectable (80% power) | Paired difference, "
        f"last epoch [{level} interval] | Detectable |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [row["strategy"], str(row["n"]), format_mean(row["mean"], row["std"]),
                 format_mean(row["last_mean"], row["last_std"]), f"{row['budget']:.2f}"]  # fmt: skip
        for key in ("vs_baseline", "last_vs_baseline"):
            cells += format_versus(row[key], row["strategy"] == baseline)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_comparison(rows: list[dict], groups: dict, baseline: str, path: Path) -> None:
    """Left: each seed's accuracy and the mean +- std per strategy (best-validation checkpoint; the last epoch's mean
    hollow). Right: the paired difference and its interval, of the best-validation checkpoints (filled) and of the
    last epochs (hollow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["strategy"] for row in rows]
    ys = range(len(rows))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.45 * len(rows) + 1.5), sharey=True)
    for y, row in enumerate(rows):
        left.plot(list(groups[row["strategy"]]["acc"].values()), [y] * row["n"], "o", color="0.6", ms=4)
        left.errorbar(row["mean"], y, xerr=row["std"] or 0, fmt="D", color="C0", capsize=3)
        if row.get("last_mean") is not None:
            left.plot(row["last_mean"], y + 0.25, "D", mfc="none", color="C0")
        for shift, key, filled in ((0.0, "vs_baseline", True), (0.25, "last_vs_baseline", False)):
            versus = row.get(key)
            if versus is None:
                continue
            low, high = versus["low"], versus["high"]
            error = None if low is None else [[versus["mean"] - low], [high - versus["mean"]]]
            right.errorbar(versus["mean"], y + shift, xerr=error, fmt="D", color="C1", capsize=3,
                           mfc="C1" if filled else "none")  # fmt: skip
    left.set_yticks(list(ys), names)
    left.invert_yaxis()
    left.set_xlabel("test top-1 (%): seeds and mean ± std\n(hollow: the last epoch's mean)")
    right.axvline(0, color="0.3", lw=0.8)
    right.set_xlabel(f"paired difference to {baseline} (points), 95% interval\n(hollow: the last epochs')")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    config = parse_config(Config, argv, __doc__)
    if not 0 < config.confidence < 1:
        raise UserError("--confidence must lie in (0, 1), e.g. 0.95.")
    groups = read_groups(config.runs)
    baselines = [name.strip() for name in config.baseline.split(",") if name.strip()]
    tables = {baseline: compare(groups, baseline, config.confidence) for baseline in baselines}
    rows = tables[baselines[0]]  # the JSON's rows pair with the first baseline, and with each under "versus"
    for k, row in enumerate(rows):  # compare() keeps the groups' order: row k is the same strategy in every table
        row["versus"] = {baseline: {key: tables[baseline][k][key] for key in ("vs_baseline", "last_vs_baseline")}
                         for baseline in baselines}  # fmt: skip
    text = "\n\n".join(markdown_table(tables[baseline], baseline, config.confidence) for baseline in baselines)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.md").write_text(text + "\n")
    save_json(out / "comparison.json", rows)
    plot_comparison(rows, groups, baselines[0], out / "comparison.png")
    print(text)


if __name__ == "__main__":
    run_cli(main)
