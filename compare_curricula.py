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
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from analysis.runs import run_budget
from analysis.stats import paired_difference
from common.cli import field, parse_config
from common.errors import UserError, run_cli
from common.files import save_json
from data.splits import load_data


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
    for k, row in enumerate(rows):  # compare() keeps the groups' order: row k is one strategy, whatever the table
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
