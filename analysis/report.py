"""Figures of a set of runs and a markdown report that shows them beside the results table (evaluate.py --report).

One function per figure; each reads the run folders' own files (metrics.csv, difficulty_history.npz, coverage.npy).
Seeds of one configuration are drawn as their mean with a +-std band. Multi-episode RL runs are drawn from their last
episode: the training run whose checkpoints, coverage and scores the folder keeps.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from common.metrics import read_metrics

matplotlib.use("Agg")  # files only: no display on a training server

REWARD_COLUMNS = ("reward_acc", "reward_loss", "reward_early", "reward_abs")
HISTOGRAM_PANELS = 4


# ----------------------------------------------------------------------------------------------------------------------
# Reading runs


def load_metrics(folder: Path) -> list[dict]:
    """metrics.csv rows of the run's (last) training run."""
    rows = read_metrics(folder / "metrics.csv")
    if rows and rows[0].get("episode"):
        last = rows[-1]["episode"]
        rows = [row for row in rows if row["episode"] == last]
    return rows


def column(rows: list[dict], name: str) -> np.ndarray:
    """A metrics column as floats; empty cells (a column a row did not log) become NaN."""
    return np.array([float(row[name]) if row.get(name) not in (None, "") else np.nan for row in rows])


def has_column(rows: list[dict], name: str) -> bool:
    return bool(rows) and not np.isnan(column(rows, name)).all()


def curve_groups(rows: list[dict]) -> list[dict]:
    """The table's student rows that have run folders with metrics, each with its folders' metrics."""
    groups = []
    for row in rows:
        folders = [Path(run["run"]) for run in row.get("runs", []) if (Path(run["run"]) / "metrics.csv").is_file()]
        if folders:
            metrics = [load_metrics(folder) for folder in folders]
            groups.append({"name": row["name"], "label": row["model"], "folders": folders, "metrics": metrics})
    return groups


# ----------------------------------------------------------------------------------------------------------------------
# Figures


def plot_mean(ax, metrics: list[list[dict]], name: str, **style):
    """Mean over seeds of one column per epoch, with a +-std band when there are several seeds. Returns the line."""
    length = min(len(rows) for rows in metrics)
    values = np.stack([column(rows[:length], name) for rows in metrics])
    epochs = np.arange(1, length + 1)
    mean = values.mean(axis=0)
    (line,) = ax.plot(epochs, mean, marker="." if length <= 30 else None, **style)
    if len(values) > 1:
        std = values.std(axis=0, ddof=1)
        ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    return line


def plot_accuracy_and_loss(groups: list[dict], path: Path) -> None:
    """Validation top-1 and training loss per epoch of every row, side by side."""
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    for group in groups:
        label = f"{group['name']} (n={len(group['folders'])})" if len(group["folders"]) > 1 else group["name"]
        plot_mean(acc_ax, group["metrics"], "val_acc", label=label)
        plot_mean(loss_ax, group["metrics"], "train_loss", label=label)
    acc_ax.set(title="Validation accuracy", xlabel="epoch", ylabel="top-1 (%)")
    # log scale: a label CE and a T^2-scaled KL differ by orders of magnitude, and each row has its own mix
    loss_ax.set(title="Training loss (each row's own label/teacher mix)", xlabel="epoch", ylabel="loss", yscale="log")
    for ax in (acc_ax, loss_ax):
        style_axes(ax)
    acc_ax.legend(fontsize="small")
    save_figure(fig, path)


def plot_curriculum(group: dict, path: Path) -> None:
    """Target difficulty per epoch and what was selected around it; the reward and its terms below for RL runs."""
    metrics = group["metrics"]
    is_rl = has_column(metrics[0], "reward")
    fig, axes = plt.subplots(
        2 if is_rl else 1, 1, figsize=(10, 7 if is_rl else 4), sharex=True, squeeze=False, layout="constrained"
    )
    ax = axes[0, 0]
    if has_column(metrics[0], "difficulty_selected_min"):
        length = min(len(rows) for rows in metrics)
        low = np.mean([column(rows[:length], "difficulty_selected_min") for rows in metrics], axis=0)
        high = np.mean([column(rows[:length], "difficulty_selected_max") for rows in metrics], axis=0)
        ax.fill_between(np.arange(1, length + 1), low, high, color="tab:orange", alpha=0.2, label="selected (min-max)")
    for name, style in (
        ("target_difficulty", {"color": "black", "linewidth": 2, "label": "target"}),
        ("difficulty_selected", {"color": "tab:orange", "label": "mean of the selection"}),
        ("difficulty_all", {"color": "tab:blue", "linestyle": "--", "label": "mean of the whole set"}),
    ):
        if has_column(metrics[0], name):
            plot_mean(ax, metrics, name, **style)
    ax.set(title=f"{group['name']}: {group['label']}", ylabel="difficulty")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    if is_rl:
        ax = axes[1, 0]
        lines = [plot_mean(ax, metrics, "reward", color="black", linewidth=2, label="reward")]
        for name in (name for name in REWARD_COLUMNS if has_column(metrics[0], name)):  # none with --reward twin
            lines.append(plot_mean(ax, metrics, name, linewidth=1, label=name.replace("reward_", "R_")))
        ax.axhline(0, color="grey", linewidth=0.5)
        clipped = clip_outliers(ax, lines)
        note = f" ({clipped} off-scale values marked at the edge)" if clipped else ""
        ax.set(title=f"Reward of each epoch and its terms{note}", ylabel="reward")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    axes[-1, 0].set_xlabel("epoch")
    for ax in axes[:, 0]:
        style_axes(ax)
    save_figure(fig, path)


def robust_limits(values: np.ndarray) -> tuple[float, float]:
    """y-limits that keep the bulk of the values readable when a few spike (the first epochs' accuracy jump makes
    R_acc 30x the other terms): values beyond Tukey's far-out fences (3 spreads past the quartiles; the spread is the
    interquartile range, or half the 10-90% range where most terms sit at 0) are left out; the rest, and 0, stay in
    view with a 5% margin."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return -1.0, 1.0
    q10, q25, q75, q90 = np.percentile(finite, [10, 25, 75, 90])
    spread = max(q75 - q25, (q90 - q10) / 2)
    kept = finite[(finite >= q25 - 3 * spread) & (finite <= q75 + 3 * spread)]
    low, high = min(kept.min(), 0.0), max(kept.max(), 0.0)
    pad = 0.05 * (high - low) or 1.0
    return float(low - pad), float(high + pad)


def clip_outliers(ax, lines) -> int:
    """Set robust y-limits for the lines and mark each value beyond them at the edge (a triangle in its line's colour
    and the value): a linear scale keeps the terms comparable in their own units, and no spike is hidden. Returns how
    many values were clipped."""
    low, high = robust_limits(np.concatenate([line.get_ydata() for line in lines]))
    ax.set_ylim(low, high)
    at_edge = {}  # (epoch, edge) -> values already marked there: their labels stack instead of overlapping
    for line in lines:
        for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True):
            if low <= y <= high or not np.isfinite(y):
                continue
            edge, marker, step = (high, "^", -11) if y > high else (low, "v", 11)
            stacked = at_edge.setdefault((x, edge), [])
            ax.plot(x, edge, marker=marker, markersize=9, color=line.get_color(), clip_on=False, linestyle="none")
            ax.annotate(f"{y:.3g}", (x, edge), textcoords="offset points", xytext=(7, step * (len(stacked) + 1) - 3),
                        fontsize="small", color=line.get_color())  # fmt: skip
            stacked.append(y)
    return sum(map(len, at_edge.values()))


def spread_keys(keys: list[str], count: int = HISTOGRAM_PANELS) -> list[str]:
    """Up to `count` of the `epoch_E` keys, evenly spread from the first scoring to the last."""
    keys = sorted(keys, key=lambda key: int(key.removeprefix("epoch_")))
    picks = np.unique(np.linspace(0, len(keys) - 1, min(count, len(keys))).round().astype(int))
    return [keys[i] for i in picks]


def plot_difficulty_histograms(folder: Path, rows: list[dict], path: Path) -> None:
    """The difficulty scores at a few rescorings, with the band the following epoch selected and its target."""
    history = np.load(folder / "difficulty_history.npz")
    keys = spread_keys(list(history.files))
    scores = {key: history[key].astype(np.float32) for key in keys}
    by_epoch = {int(row["epoch"]): row for row in rows}
    # scores computed after epoch E (E = 0: before training) are first used by epoch E + 1: titled by that epoch,
    # counted from 1 as in every other figure
    next_rows = {key: by_epoch.get(int(key.removeprefix("epoch_")) + 1) for key in keys}
    # one range and the same bins in every panel, wide enough for targets far from the scores
    targets = [float(row["target_difficulty"]) for row in next_rows.values() if row and row.get("target_difficulty")]
    low = min([*(values.min() for values in scores.values()), *targets])
    high = max([*(values.max() for values in scores.values()), *targets])
    bins = np.linspace(low, high, 41) if high > low else 40
    fig, axes = plt.subplots(
        1, len(keys), figsize=(3.5 * len(keys) + 1, 3.8), squeeze=False, sharex=True, sharey=True, layout="constrained"
    )
    for ax, key in zip(axes[0], keys, strict=True):
        scored_after, row = int(key.removeprefix("epoch_")), next_rows[key]
        ax.hist(scores[key], bins=bins, color="tab:blue", label="scores")
        if row and row.get("difficulty_selected_min"):
            span = float(row["difficulty_selected_min"]), float(row["difficulty_selected_max"])
            ax.axvspan(*span, color="tab:orange", alpha=0.3, zorder=0, label="selected in that epoch")
        if row and row.get("target_difficulty"):
            ax.axvline(float(row["target_difficulty"]), color="black", linestyle="--", label="its target")
        ax.set(title=f"scores used by epoch {scored_after + 1}", xlabel="difficulty")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("samples")
    fig.suptitle(f"Difficulty scores of {folder.name}")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize="small")
    save_figure(fig, path)


def plot_coverage(groups: list[dict], path: Path) -> None:
    """How many epochs each training sample was selected in, one panel per curriculum run (its first seed). A log
    scale and the count on each bar: "1 of 2000 never selected" must show, not vanish beside a bar of 1500."""
    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups) + 1, 3.8), squeeze=False, layout="constrained")
    for ax, group in zip(axes[0], groups, strict=True):
        coverage = np.load(group["folders"][0] / "coverage.npy")
        counts = np.bincount(coverage, minlength=len(group["metrics"][0]) + 1)
        bars = ax.bar(np.arange(len(counts)), counts, color=["tab:red", *["tab:green"] * (len(counts) - 1)])
        if len(counts) <= 40:  # a count per bar while the labels still fit
            ax.bar_label(bars, labels=[str(count) if count else "" for count in counts], fontsize="x-small")
        never = int(counts[0])
        ax.annotate(
            f"never selected: {never} of {len(coverage)} ({never / len(coverage):.1%})",
            xy=(0.03, 0.95), xycoords="axes fraction", va="top", fontsize="small",
        )  # fmt: skip
        ax.set(title=group["folders"][0].name, xlabel="epochs selected in", ylabel="training samples (log scale)")
        ax.set_yscale("log")
        ax.set_ylim(0.5, counts.max() * 3)  # from 0.5: a bar of one sample stands half a decade tall
        style_axes(ax)
    save_figure(fig, path)


def style_axes(ax) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.grid(alpha=0.3)


def save_figure(fig, path: Path) -> None:
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------------
# The report


def is_subset_curriculum(group: dict) -> bool:
    """Some epoch trained on less than the whole training set: coverage can tell whether data was starved."""
    folder = group["folders"][0]
    if not (folder / "coverage.npy").is_file() or not has_column(group["metrics"][0], "selected"):
        return False
    return column(group["metrics"][0], "selected").min() < len(np.load(folder / "coverage.npy"))


def write_report(rows: list[dict], table: str, folder) -> Path:
    """The figures of the table's runs and folder/report.md, which shows them beside the table. Returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    groups = curve_groups(rows)
    lines = ["# Results report", "", "Written by `evaluate.py --report`. Test accuracy of each row:", "", table, ""]
    lines += [
        "Rows of several seeds show mean ± sample std (n runs); their curves show the mean with a ± std band.",
        "",
    ]
    if groups:
        plot_accuracy_and_loss(groups, folder / "accuracy.png")
        lines += ["## Training curves", "", "![Validation accuracy and training loss per epoch](accuracy.png)", ""]
    for index, group in enumerate(groups, start=1):
        metrics, first = group["metrics"], group["folders"][0]
        if not (has_column(metrics[0], "target_difficulty") or has_column(metrics[0], "difficulty_selected")):
            continue
        stem = f"{index}-" + re.sub(r"[^\w.-]", "_", group["name"])  # a safe file name, unique by its index
        lines += [f"## Curriculum of `{group['name']}`: {group['label']}", ""]
        plot_curriculum(group, folder / f"curriculum-{stem}.png")
        lines += [f"![Target difficulty per epoch of {group['name']}](curriculum-{stem}.png)", ""]
        if (first / "difficulty_history.npz").is_file():
            plot_difficulty_histograms(first, metrics[0], folder / f"difficulty-{stem}.png")
            lines += [f"![Difficulty scores of {first.name} at a few epochs](difficulty-{stem}.png)", ""]
    starved = [group for group in groups if is_subset_curriculum(group)]
    if starved:
        plot_coverage(starved, folder / "coverage.png")
        lines += ["## Coverage", "", "Epochs each training sample was selected in; the red bar never trained.", ""]
        lines += ["![How many epochs each training sample was selected in](coverage.png)", ""]
    path = folder / "report.md"
    path.write_text("\n".join(lines))
    return path
