"""Reading a finished run folder for a table: its row label in the reference table's words, and its training budget
(samples trained on, the RL agent's proxy runs included)."""

from __future__ import annotations

from pathlib import Path

from common.metrics import read_metrics
from curriculum_dataloader import STRATEGIES


def selects_all(config: dict) -> bool:
    """The run trained on all its data every epoch (no curriculum; a run of before --curriculum had none)."""
    strategy = STRATEGIES.get(config.get("curriculum", "none"))
    return strategy is not None and strategy.selects_all


def describe(config: dict) -> str:
    """A row label in the reference table's words, from a run's config."""
    weight = config["label_weight"]
    if weight == 1:
        loss = "labels only"
    elif weight == 0:
        loss = "teacher only"
    else:
        loss = f"{weight:.0%} labels, {1 - weight:.0%} teacher"
    if config.get("script") == "train_student_rl.py":
        kind = "KD + curriculum chosen by the " + ("bandit" if config.get("agent") == "bandit" else "RL agent")
    elif not selects_all(config):
        kind = f"KD + {config['curriculum']} curriculum"
    else:
        kind = "KD" if weight < 1 else ""
    gate = config.get("label_gate", "all")  # absent from runs of before --label-gate
    loss += f", label gate {gate}" if gate != "all" else ""
    details = ", ".join(part for part in (kind, loss) if part)
    return f"Student ({config['student']}, {details})"


def training_budget(metrics: list[dict], train_size: int) -> float:
    """Samples trained on, in epochs of the full training set: each epoch counts its `selected` samples (a
    curriculum's), or the whole set (plain training). A 60% curriculum over 10 epochs is a budget of 6."""
    return sum(int(row["selected"]) / train_size if row.get("selected") else 1.0 for row in metrics)


def run_budget(folder: Path, train_size: int) -> float:
    """A run's training budget with its RL agent's proxy runs (`proxy/metrics.csv`) counted in: a curriculum is
    compared with the others at equal total compute."""
    logs = [path for path in (folder / "metrics.csv", folder / "proxy" / "metrics.csv") if path.is_file()]
    return sum(training_budget(read_metrics(path), train_size) for path in logs)
