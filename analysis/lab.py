"""The lab's results as data, and its tables from that data (docs/curriculum.md#the-lab-protocol).

Every finished run of `sweep.py lab` is one row of a CSV (`collect`); everything the docs say about the lab is
computed from those rows alone (`summarise`): a value per (teacher, draw) cell (the mean over the cell's seeds), the
tuned rows picked per cell on validation, paired differences over the cells (the units that vary: df = cells - 1),
p-values corrected by Holm over the protocol's family, and a tie declared only by two one-sided tests at +-MARGIN.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import re
import statistics
from pathlib import Path

from analysis.stats import minimum_detectable_difference, paired_difference, t_cdf, t_quantile
from common.errors import UserError

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results" / "lab-runs.csv"  # every run of the docs' lab
PILOT = RESULTS.with_name("lab-pilot-runs.csv")  # the pilot's runs: validation figures only
FIGURE = Path(__file__).resolve().parents[1] / "docs" / "figures" / "lab-family.png"
MARGIN = 0.5  # points of top-1: a difference inside +-MARGIN is a tie, if two one-sided tests say so
LEVEL = 0.05  # every test's level; the family's p-values are Holm-corrected
NAME = re.compile(
    r"^(?P<variant>clean|symmetric|confusable)-(?P<row>.+)-t(?P<teacher>\d+)-d(?P<draw>\d+)-s(?P<seed>\d+)$"
)
COLUMNS = ["run", "variant", "row", "teacher", "draw", "seed", "noise_kind", "label_noise", "val_label_noise",
           "label_weight", "label_gate", "curriculum", "agent", "epochs", "budget", "twin_budget", "config_hash",
           "best_epoch", "val_best", "val_last", "test_best", "test_last"]  # fmt: skip
# tuned rows: the candidate with the best validation top-1 of its cell (noisy validation where the labels are noisy)
TUNED = {"kd-tuned": ("kd-lw0", "kd-lw0.2", "kd-lw0.4", "kd-lw0.5", "kd-lw0.6", "kd-lw0.8"),
         "gate-tuned": ("gate-top1", "gate-top2", "gate-top3")}  # fmt: skip
# the protocol's family, fixed before the runs: (variant, row, baseline, the question)
NOISY = ("symmetric", "confusable")
FAMILY = [
    *((v, "gate-tuned", "kd-tuned", "does the gate beat KD with its label weight tuned as hard?") for v in NOISY),
    *((v, "gate-tuned", "kd-lw0", "does the gate beat teacher-only KD?") for v in NOISY),
    *((v, "oracle", "gate-tuned", "how far is the gate from the oracle?") for v in NOISY),
    *((v, "bandit-twin", "gate-tuned", "is the twin bandit level with the tuned gate?") for v in NOISY),
    *((v, "random_subset", "kd-tuned", "does a random 60% match tuned KD on all the data?") for v in NOISY),
    ("symmetric", "reducible", "kd-tuned", "does reducible-loss selection match tuned KD on all the data?"),
    ("clean", "random_subset", "kd9-lw0.6", "does a random 60% match KD at equal compute (9 epochs)?"),
    ("clean", "reducible", "kd9-lw0.6", "does reducible-loss selection match KD at equal compute?"),
    ("clean", "random_subset", "kd-lw0.6", "does a random 60% match KD on all the data (15 epochs)?"),
    ("clean", "reducible", "kd-lw0.6", "does reducible-loss selection match KD on all the data?"),
    ("clean", "gate-top2", "kd-tuned", "what does the gate cost on clean labels?"),
    ("clean", "bandit-twin", "kd-tuned", "is the twin bandit level with tuned KD on clean labels?"),
]  # fmt: skip
# outside the family, descriptive: what privileged clean validation labels change (selection of checkpoints)
CONTROLS = [
    ("symmetric", "kd-lw0.6-cleanval", "kd-lw0.6", "clean validation labels instead of noisy ones, KD 60/40"),
    ("symmetric", "gate-top2-cleanval", "gate-top2", "clean validation labels instead of noisy ones, gate top2"),
]
WHERE = {"out", "resume", "overwrite", "device", "workers", "cache_dir", "seed", "reward_twin", "teacher_checkpoint"}


# ----------------------------------------------------------------------------------------------------------------------
# Runs -> rows of data


def collect(folders: list[str], train_size_of) -> list[dict]:
    """One CSV row per finished lab run (its folder named by sweeps/lab.py); `train_size_of(data)`: the training set's
    size, for the budget."""
    from analysis.runs import run_budget
    from common.metrics import read_metrics

    rows = []
    for folder in map(Path, folders):
        match = NAME.match(folder.name)
        if match is None or not (folder / "results.json").is_file():
            raise UserError(f"{folder} is not a finished lab run (<variant>-<row>-t<T>-d<D>-s<S> with results.json).")
        config = json.loads((folder / "config.json").read_text())
        results = json.loads((folder / "results.json").read_text())
        metrics = read_metrics(folder / "metrics.csv")
        size = train_size_of(config["data"])
        twin = config.get("reward_twin")
        what = {key: value for key, value in config.items() if key not in WHERE}
        rows.append({
            "run": folder.name, **{key: match[key] for key in ("variant", "row")},
            **{key: int(match[key]) for key in ("teacher", "draw", "seed")},
            "noise_kind": config.get("label_noise_kind", "symmetric") if config.get("label_noise") else "",
            "label_noise": config.get("label_noise", 0.0),
            "val_label_noise": config["label_noise"] if config.get("val_label_noise") is None
            else config["val_label_noise"],
            "label_weight": config["label_weight"], "label_gate": config.get("label_gate", "all"),
            "curriculum": config.get("curriculum", "none"), "agent": config.get("agent", ""),
            "epochs": config["epochs"], "budget": round(run_budget(folder, size), 4),
            "twin_budget": round(run_budget(folder.parent / Path(twin).name, size), 4) if twin else 0.0,
            "config_hash": hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12],
            "best_epoch": results["best_epoch"], "val_best": round(results["best_val_acc"], 4),
            "val_last": round(float(metrics[-1]["val_acc"]), 4),
            "test_best": round(results["test_acc"], 4), "test_last": round(results["last_test_acc"], 4),
        })  # fmt: skip
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda row: row["run"]))


def read_csv(path: Path) -> list[dict]:
    numbers = {"teacher", "draw", "seed", "epochs", "best_epoch"}
    floats = {"label_noise", "val_label_noise", "label_weight", "budget", "twin_budget", "val_best", "val_last",
              "test_best", "test_last"}  # fmt: skip

    def parse(key: str, value: str):
        if key in numbers | floats and value == "":  # a pilot's test figures: never read, stored blank
            return None
        return int(value) if key in numbers else float(value) if key in floats else value

    with open(path, newline="") as handle:
        return [{key: parse(key, value) for key, value in row.items()} for row in csv.DictReader(handle)]


# ----------------------------------------------------------------------------------------------------------------------
# Rows of data -> per-cell values, tuned rows, tests


def cell_values(rows: list[dict]) -> dict:
    """`{(variant, row): {(teacher, draw): {metric: mean over the cell's seeds}}}`, with the tuned rows added: per
    cell the candidate of best validation top-1 (ties: the first in TUNED's order) and `picked`, its name."""
    grouped: dict = {}
    for row in rows:
        cell = grouped.setdefault((row["variant"], row["row"]), {}).setdefault((row["teacher"], row["draw"]), [])
        cell.append(row)
    values = {
        key: {cell: {metric: statistics.fmean(run[metric] for run in runs)
                     for metric in ("val_best", "test_best", "test_last", "budget", "twin_budget")}
              for cell, runs in cells.items()}
        for key, cells in grouped.items()
    }  # fmt: skip
    for variant in {variant for variant, _ in values}:
        for tuned, candidates in TUNED.items():
            runs = [set(values[(variant, name)]) for name in candidates if (variant, name) in values]
            if not runs:
                continue
            cells = set.union(*runs)  # the grid is the candidates every cell ran: the same in each cell
            present = [name for name in candidates if set(values.get((variant, name), {})) == cells]
            picks = {}
            for cell in sorted(cells):
                best = max(present, key=lambda name: (values[(variant, name)][cell]["val_best"], -present.index(name)))
                tuning = sum(values[(variant, name)][cell]["budget"] for name in present)
                picks[cell] = {**values[(variant, best)][cell], "picked": best, "tuning_budget": tuning}
            values[(variant, tuned)] = picks
    return values


def p_value(difference: dict) -> float:
    """Two-sided paired t-test of mean 0 (n - 1 dof) from a paired_difference."""
    se = standard_error(difference)
    if se == 0:
        return 0.0 if difference["mean"] else 1.0
    return 2 * (1 - t_cdf(abs(difference["mean"]) / se, difference["n"] - 1))


def standard_error(difference: dict) -> float:
    half = difference["high"] - difference["mean"]
    return half / t_quantile(0.975, difference["n"] - 1)


def tost_p(difference: dict, margin: float = MARGIN) -> float:
    """Two one-sided tests of |true difference| >= margin: the larger of the two p-values; below the level, the
    difference lies within +-margin (equivalently, the 90% interval does)."""
    se, dof, mean = standard_error(difference), difference["n"] - 1, difference["mean"]
    if se == 0:
        return 0.0 if abs(mean) < margin else 1.0
    return max(1 - t_cdf((mean + margin) / se, dof), t_cdf((mean - margin) / se, dof))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: the k-th smallest of m p-values times (m - k + 1), kept monotone, at most 1."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def verdict(difference: dict, adjusted_p: float, adjusted_tost: float) -> str:
    if adjusted_p < LEVEL:
        return "better" if difference["mean"] > 0 else "worse"
    if adjusted_tost < LEVEL:
        return f"tie (within ±{MARGIN:g})"
    return "inconclusive"


def compare(values: dict, comparisons: list[tuple], metric: str = "test_best", corrected: bool = True) -> list[dict]:
    """Each comparison's paired difference over the cells both rows have, its p-value and TOST p-value, both
    Holm-corrected over `comparisons` (the family) when `corrected`, and its verdict."""
    out = []
    for variant, row, baseline, question in comparisons:
        if (variant, row) not in values or (variant, baseline) not in values:
            continue
        a = {cell: v[metric] for cell, v in values[(variant, row)].items()}
        b = {cell: v[metric] for cell, v in values[(variant, baseline)].items()}
        difference = paired_difference(a, b)
        if difference["n"] < 2:
            continue
        out.append({"variant": variant, "row": row, "baseline": baseline, "question": question, **difference,
                    "p": p_value(difference), "tost": tost_p(difference)})  # fmt: skip
    for key in ("p", "tost"):
        adjusted = holm([entry[key] for entry in out]) if corrected else [entry[key] for entry in out]
        for entry, value in zip(out, adjusted, strict=True):
            entry[f"{key}_holm"] = value
    for entry in out:
        entry["verdict"] = verdict(entry, entry["p_holm"], entry["tost_holm"])
    return out


def share_recovered(values: dict, variant: str, metric: str = "test_best") -> dict | None:
    """What the tuned gate wins back of what the noise costs tuned KD: (gate - noisy KD) / (clean KD - noisy KD),
    from the means over the cells all three have, with the per-cell ratios' range."""
    keys = [(variant, "gate-tuned"), (variant, "kd-tuned"), ("clean", "kd-tuned")]
    if any(key not in values for key in keys):
        return None
    cells = sorted(set.intersection(*(set(values[key]) for key in keys)))
    gate, noisy, clean = ([values[key][cell][metric] for cell in cells] for key in keys)
    mean = lambda xs: statistics.fmean(xs)  # noqa: E731
    costs = [c - n for c, n in zip(clean, noisy, strict=True)]
    ratios = [(g - n) / cost for g, n, cost in zip(gate, noisy, costs, strict=True) if cost > 0]
    return {"share": (mean(gate) - mean(noisy)) / (mean(clean) - mean(noisy)), "cost": mean(costs),
            "low": min(ratios) if ratios else math.nan, "high": max(ratios) if ratios else math.nan,
            "n": len(cells)}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# Tables


ROW_TEXT = {
    "kd-tuned": "plain KD, label weight picked per cell on validation from 0/0.2/0.4/0.5/0.6/0.8",
    "gate-tuned": "KD 60/40 with the label gate, K picked per cell on validation from top1/top2/top3",
    "kd9-lw0.6": "plain KD 60/40 for 9 epochs (the 60% rows' compute)",
    "oracle": "KD 60/40, label term only on the labels the noise left alone (a control)",
    "random_subset": "KD 60/40 on a random 60% per epoch",
    "reducible": "KD 60/40 on the 60% of highest reducible loss",
    "bandit-twin": "bandit over gates all/none/top2, twin reward (its twin: the cell's kd-lw0.6 run)",
    "gate-top2": "KD 60/40 with the label gate top2",
}


def row_text(row: str) -> str:
    if row.startswith("kd-lw"):
        weight = row.removeprefix("kd-lw").removesuffix("-cleanval")
        return f"plain KD, label weight {weight}" + (", clean validation labels" if row.endswith("-cleanval") else "")
    if row.endswith("-cleanval"):
        return ROW_TEXT.get(row.removesuffix("-cleanval"), row) + ", clean validation labels"
    return ROW_TEXT.get(row, f"KD 60/40 with the label gate {row.removeprefix('gate-')}")


def mean_sd(xs: list[float]) -> str:
    return f"{statistics.fmean(xs):.2f} ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"


def rows_table(values: dict, variant: str) -> str:
    """One line per row of a variant: test top-1 (best-validation checkpoint, last epoch), validation top-1, budget."""
    lines = ["| Row | What it trains | Cells | Test top-1, best-val | Last epoch | Validation top-1 | Budget (epochs "
             "of all data) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    names = [row for (v, row) in values if v == variant]
    order = [*TUNED, *sorted(name for name in names if name not in TUNED)]
    for row in (name for name in order if name in names):
        cells = values[(variant, row)]

        def column(metric: str, cells=cells) -> list[float]:
            return [cell[metric] for cell in cells.values()]

        budget = statistics.fmean(c["budget"] + c["twin_budget"] for c in cells.values())
        if row in TUNED:
            picked = statistics.multimode(c["picked"] for c in cells.values())
            budget_text = f"{budget:.1f} (tuning: {statistics.fmean(column('tuning_budget')):.0f})"
            what = f"{row_text(row)} (most often {', '.join(picked)})"
        else:
            budget_text = f"{budget:.1f}" + (" (its twin's 15 included)" if row == "bandit-twin" else "")
            what = row_text(row)
        lines.append(f"| `{row}` | {what} | {len(cells)} | {mean_sd(column('test_best'))} | "
                     f"{mean_sd(column('test_last'))} | {mean_sd(column('val_best'))} | {budget_text} |")  # fmt: skip
    return "\n".join(lines)


def comparisons_table(entries: list[dict], corrected: bool = True) -> str:
    head = "| Variant | Question | Row − baseline | Cells | Difference [95%] | Detectable | p | "
    head += "Holm p | TOST p (±0.5), Holm | Verdict |" if corrected else "TOST p (±0.5) |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|" if corrected else "|---|---|---|---|---|---|---|---|"]
    for e in entries:
        detectable = f"{e['detectable']:.2f}" if e["detectable"] is not None else "—"
        cells = [e["variant"], e["question"], f"`{e['row']}` − `{e['baseline']}`", str(e["n"]),
                 f"{e['mean']:+.2f} [{e['low']:+.2f}, {e['high']:+.2f}]", detectable, f"{e['p']:.3f}"]  # fmt: skip
        cells += [f"{e['p_holm']:.3f}", f"{e['tost_holm']:.3f}", e["verdict"]] if corrected else [f"{e['tost']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarise(rows: list[dict]) -> dict:
    """Everything the docs say about the lab, from its rows: tables (markdown) by name."""
    values = cell_values(rows)
    family, last = compare(values, FAMILY), compare(values, FAMILY, metric="test_last")
    controls = compare(values, CONTROLS, corrected=False)
    shares = {variant: share_recovered(values, variant) for variant in NOISY}
    share_lines = ["| Noise | Cells | Noise costs tuned KD | Share the tuned gate recovers | Per-cell range |",
                   "|---|---|---|---|---|"]  # fmt: skip
    for variant, share in shares.items():
        if share:
            share_lines.append(f"| {variant} | {share['n']} | {share['cost']:.2f} points | {share['share']:.0%} | "
                               f"{share['low']:.0%} to {share['high']:.0%} |")  # fmt: skip
    tables = {f"lab-{variant}": rows_table(values, variant) for variant in ("clean", "symmetric", "confusable")
              if any(v == variant for v, _ in values)}  # fmt: skip
    tables["lab-family"] = comparisons_table(family)
    tables["lab-family-last"] = comparisons_table(last)
    tables["lab-controls"] = comparisons_table(controls, corrected=False)
    tables["lab-shares"] = "\n".join(share_lines)
    return {"tables": tables, "family": family, "values": values}


def pilot_table(rows: list[dict], cells: int) -> str:
    """Validation top-1 per row over the pilot's seeds, and the paired sd of the deciding differences (on validation),
    with the difference `cells` units could then detect."""
    by = {}
    for row in rows:
        by.setdefault(f"{row['variant']}-{row['row']}", {})[row["seed"]] = row["val_best"]
    lines = ["| Row | Seeds | Validation top-1 (best), mean ± sd |", "|---|---|---|"]
    for name, seeds in sorted(by.items()):
        lines.append(f"| `{name}` | {len(seeds)} | {mean_sd(list(seeds.values()))} |")
    pairs = [("symmetric-gate-top2", "symmetric-kd-lw0.6"), ("symmetric-gate-top2", "symmetric-kd-lw0"),
             ("clean-kd-lw0.6", "clean-kd-lw0")]  # fmt: skip
    lines += ["", "| Difference (validation) | Mean | sd of the paired differences | Detectable at "
              f"{cells} units (80% power) |", "|---|---|---|---|"]  # fmt: skip
    for a, b in pairs:
        if a in by and b in by:
            common = sorted(set(by[a]) & set(by[b]))
            differences = [by[a][s] - by[b][s] for s in common]
            if len(differences) > 1:
                sd = statistics.stdev(differences)
                detectable = minimum_detectable_difference(sd, cells)
                shown = f"{detectable:.2f}" if detectable is not None else "—"
                lines.append(f"| `{a}` − `{b}` | {statistics.fmean(differences):+.2f} | {sd:.2f} | {shown} |")
    return "\n".join(lines)


@functools.cache
def stored_summary() -> dict:
    """The summary of the stored results (RESULTS), which the docs' lab tables show."""
    return summarise(read_csv(RESULTS))


def stored_table(name: str) -> str:
    if name == "lab-pilot":
        return pilot_table(read_csv(PILOT), 6)
    return stored_summary()["tables"][name]


def plot_family(entries: list[dict], path: Path) -> None:
    """The family's paired differences with their 95% intervals, the ±MARGIN band of a tie shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(9, 0.38 * len(entries) + 1.4))
    colours = {"better": "C2", "worse": "C3", "inconclusive": "0.45"}
    for y, e in enumerate(entries):
        colour = colours.get(e["verdict"], "C0")
        axis.errorbar(e["mean"], y, xerr=[[e["mean"] - e["low"]], [e["high"] - e["mean"]]], fmt="D", color=colour,
                      capsize=3)  # fmt: skip
    axis.axvspan(-MARGIN, MARGIN, color="0.9", zorder=0)
    axis.axvline(0, color="0.3", lw=0.8)
    axis.set_yticks(range(len(entries)), [f"{e['variant']}: {e['row']} − {e['baseline']}" for e in entries])
    axis.invert_yaxis()
    axis.set_xlabel(f"paired difference over the cells, test top-1 points, 95% interval (grey band: ±{MARGIN:g}, a tie)"
                    "\ngreen: better, red: worse, grey: inconclusive, blue: tie (Holm-corrected)")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
