"""A run's curriculum state: the difficulty scores of the training set, what the strategy selected (coverage), and
when the scores are refreshed. The selection rules themselves are plain functions in curriculum_dataloader.py.

The trainer calls a `Curriculum` twice an epoch: `plan_epoch` (what to train on; it rescores first when its scores are
due) and `end_epoch` (the logits of the training steps it asked for, and what was trained).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

import models
from common import seeds
from common.files import arrays
from curriculum_dataloader import (
    TEACHER_GATES,
    CurriculumSpec,
    Pool,
    label_gate,
    rank_quantiles,
    reducible_loss,
    strategy_of,
)


class TrainPassScores:
    """Difficulty of the samples a training epoch saw, from the logits its steps already computed (the online
    teacher's and the student's on the augmented batch): fresh scores at no extra forward pass."""

    def __init__(self, num_samples: int, device: torch.device, labels: torch.Tensor | None = None):
        """`labels`: the training labels, given when the strategy also needs each sample's label losses."""
        self.components = {name: torch.zeros(num_samples, device=device) for name in models.DIFFICULTY_WEIGHTS}
        self.labels = None if labels is None else torch.as_tensor(labels, device=device)
        names = () if labels is None else models.LABEL_LOSSES
        self.losses = {name: torch.zeros(num_samples, device=device) for name in names}
        self.trained = torch.zeros(num_samples, device=device)

    def record(self, indices: torch.Tensor, teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> None:
        for name, values in models.difficulty_components(teacher_logits, student_logits).items():
            self.components[name][indices] = values
        if self.labels is not None:
            for name, values in models.label_losses(teacher_logits, student_logits, self.labels[indices]).items():
                self.losses[name][indices] = values
        self.trained.index_fill_(0, indices, 1.0)  # no Python number copied into device memory: no wait

    def collect(self, reduce=lambda tensor: tensor) -> tuple[np.ndarray, dict[str, torch.Tensor], dict | None]:
        """(indices, components, label losses or None) of the samples trained on. `reduce` sums a tensor across
        processes: their shards are disjoint, so the sum puts every process's rows in place; a sample drawn more than
        once (prioritised) may lie in several shards, whose values are averaged."""
        trained = reduce(self.trained).cpu()
        indices = np.flatnonzero(trained.numpy() > 0)
        rows = lambda values: reduce(values).cpu()[indices] / trained[indices]  # noqa: E731
        components = {name: rows(values) for name, values in self.components.items()}
        losses = None if self.labels is None else {name: rows(values) for name, values in self.losses.items()}
        return indices, components, losses


@dataclass
class EpochPlan:
    """One epoch as the curriculum planned it: the samples to train on, and what its training steps hand back."""

    epoch: int
    indices: np.ndarray
    target: float | None  # the target as given, for the metrics (None: the strategy takes no target)
    seen: torch.Tensor | None  # the steps count each sample they train on: seen[index] += 1
    recorder: TrainPassScores | None  # takes the steps' logits when train-pass scores are on
    weights: torch.Tensor | None = None  # prioritised: each sample's importance weight on its loss (by index)
    gate: str = "all"  # the label gate of the epoch (curriculum_dataloader.label_gate)
    label_gate: torch.Tensor | None = None  # its factor on each sample's label term (by index); None: 1 everywhere

    @property
    def on_logits(self):
        return self.recorder.record if self.recorder is not None else None


class Curriculum:
    """The difficulty scores of the training set, the chosen strategy, what it selected (coverage), and when and
    which scores are refreshed: the trainer only supplies the logits."""

    def __init__(
        self,
        spec: CurriculumSpec,
        num_samples: int,
        seed: int,
        labels: np.ndarray | None = None,
        flipped: np.ndarray | None = None,
    ):
        """`labels`: the training labels the label losses are measured on (strategies that read them); `flipped`:
        which of them --label-noise replaced (for the metrics: the share of noisy samples an epoch trained on; and the
        oracle gate)."""
        self.spec, self.strategy = spec, strategy_of(spec)
        if self.strategy.reads_losses and labels is None:
            raise ValueError(f"the {spec.strategy} strategy needs the training labels")
        self.num_samples, self.seed = num_samples, seed
        self.labels, self.flipped = labels, flipped
        self.label_gates = tuple(spec.label_gates)
        self.gate_tables: dict[str, np.ndarray] = {}  # each gate's factors: fixed by the teacher and the labels
        self.scores: np.ndarray | None = None
        self.components: dict[str, np.ndarray] = {}
        self.losses: dict[str, np.ndarray] = {}  # strategies that read them: each sample's CE, "student", "teacher"
        self.coverage = np.zeros(num_samples, dtype=np.int64)
        self.scored_epoch = 0
        self.history: dict[str, np.ndarray] = {}  # "epoch_E": the scores used from epoch E + 1 on (fp16)
        self.trained_epoch = np.zeros(num_samples, dtype=np.int64)  # the last epoch each sample was trained in

    @property
    def needs_scores(self) -> bool:
        return self.strategy.reads_scores

    @property
    def needs_losses(self) -> bool:
        return self.strategy.reads_losses

    @property
    def scores_from_train_pass(self) -> bool:
        """Whether the training steps' own logits refresh the scores of the samples they train on (--score-source)."""
        return self.needs_scores and self.spec.score_source == "train-pass"

    def due(self, epoch: int) -> bool:
        """Scores are refreshed before the first epoch and then every rescore_every epochs (`epoch`: epochs done)."""
        if not self.needs_scores:
            return False
        return self.scores is None or epoch - self.scored_epoch >= self.spec.rescore_every

    def stale(self, epoch: int) -> np.ndarray | None:
        """The samples a due refresh must score: None for all of them; with train-pass scores only those the last
        epoch did not train on (the rest were scored by its training steps)."""
        if not self.scores_from_train_pass or self.scores is None:
            return None
        return np.flatnonzero(self.trained_epoch != epoch)

    def plan_epoch(
        self, epoch: int, target: float, score_pass, device: torch.device, gate: str | None = None
    ) -> EpochPlan:
        """What 1-based `epoch` trains on, around `target`, and with which label `gate` (default: the run's): the
        scores are refreshed first when due (`score_pass`, see refresh_scores), and the plan carries what the epoch's
        training steps must hand back (end_epoch)."""
        self.refresh_scores(epoch - 1, score_pass)
        recorder = None
        if self.scores_from_train_pass:
            recorder = TrainPassScores(self.num_samples, device, self.labels if self.needs_losses else None)
        seen = torch.zeros(self.num_samples, dtype=torch.long, device=device)
        stats_target = target if self.strategy.takes_target else None
        indices, weights = self.draw(epoch, target)
        weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float32, device=device)
        gate = self.label_gates[0] if gate is None else gate
        table = None if gate == "all" else torch.as_tensor(self.gate_table(gate, score_pass), dtype=torch.float32)
        return EpochPlan(epoch, indices, stats_target, seen, recorder, weights, gate,
                         None if table is None else table.to(device))  # fmt: skip

    def gate_table(self, gate: str, score_pass) -> np.ndarray:
        """A label gate's factor per training sample, computed once: it reads only the labels and the teacher's
        logits of the un-augmented images (from the scoring cache: `score_pass` of no student rows)."""
        if gate not in self.label_gates:
            raise ValueError(f"label gate {gate!r} is not among this run's {self.label_gates}")
        if gate not in self.gate_tables:
            teacher_logits = score_pass(np.empty(0, dtype=np.int64))[0] if gate in TEACHER_GATES else None
            self.gate_tables[gate] = label_gate(gate, self.labels, teacher_logits, self.flipped)
        return self.gate_tables[gate]

    def end_epoch(self, plan: EpochPlan, reduce=lambda tensor: tensor) -> dict:
        """Take what the epoch's steps trained on and the logits the plan asked for (`reduce`: the sum across
        processes); returns the epoch's metrics.csv columns (epoch_stats)."""
        self.count_trained(reduce(plan.seen).cpu().numpy(), plan.indices, plan.epoch)
        if plan.recorder is not None:
            indices, components, losses = plan.recorder.collect(reduce)
            self.update_some(indices, components, plan.epoch, losses)
        return {**self.epoch_stats(plan.indices, plan.target), **self.gate_stats(plan)}

    def refresh_scores(self, epochs_done: int, score_pass) -> None:
        """Rescore when the scores are due (the one place that decides it). `score_pass(stale)` gives the teacher's
        and the current student's logits of the un-augmented training images: of all of them when `stale` is None,
        else of the rows in `stale` (the student's logits are None when it is empty)."""
        if self.due(epochs_done):
            self.rescore(epochs_done, score_pass)

    def rescore(self, epoch: int, score_pass) -> None:
        """New scores from the logits of a scoring pass over the stale samples (all of them, or with train-pass scores
        those the last epoch did not train on; the logit rows of the other samples are not read)."""
        stale = self.stale(epoch)
        teacher_logits, student_logits = score_pass(stale)
        if stale is None:
            self.update_scores(teacher_logits, student_logits, epoch)
            return
        if len(stale):
            teacher_logits, student_logits = teacher_logits[stale], student_logits[stale]
            components = models.difficulty_components(teacher_logits, student_logits)
            self.update_some(stale, components, epoch, self.label_losses(teacher_logits, student_logits, stale))
        self.scored_epoch = epoch

    def label_losses(self, teacher_logits: torch.Tensor, student_logits: torch.Tensor, rows=None) -> dict | None:
        """The label losses of the logits' samples (`rows` of the training set, default all) when the strategy
        reads them, else None."""
        if not self.needs_losses:
            return None
        labels = self.labels if rows is None else self.labels[rows]
        return models.label_losses(teacher_logits, student_logits, torch.as_tensor(labels))

    def update_scores(self, teacher_logits: torch.Tensor, student_logits: torch.Tensor, epoch: int) -> None:
        components = models.difficulty_components(teacher_logits, student_logits)
        self.components = {name: value.numpy() for name, value in components.items()}
        losses = self.label_losses(teacher_logits, student_logits)
        self.losses = {} if losses is None else {name: value.numpy() for name, value in losses.items()}
        self.scores = models.combine_difficulty(components).numpy()
        self.scored_epoch = epoch
        self.history[f"epoch_{epoch}"] = self.scores.astype(np.float16)

    def update_some(
        self, indices: np.ndarray, components: dict[str, torch.Tensor], epoch: int, losses: dict | None = None
    ) -> None:
        """Refresh the scores (and label losses, when given) of some samples (train-pass scoring, or a pass over the
        samples it did not see)."""
        for name, values in components.items():
            self.components[name][indices] = values.numpy()
        for name, values in (losses or {}).items():
            self.losses[name][indices] = values.numpy()
        self.scores[indices] = models.combine_difficulty(components).numpy()
        self.history[f"epoch_{epoch}"] = self.scores.astype(np.float16)

    def count_trained(self, seen: np.ndarray, chosen: np.ndarray, epoch: int) -> None:
        """Coverage from what the epoch actually trained on, which must be its selection, each sample as often as it
        was drawn (once, except with prioritised)."""
        selected = np.bincount(np.asarray(chosen, dtype=np.int64), minlength=len(seen))
        if not np.array_equal(seen, selected):
            raise RuntimeError(f"epoch {epoch} trained on other samples than it selected; a sampler bug")
        self.coverage += seen
        self.trained_epoch[seen > 0] = epoch

    def by_rank(self) -> bool:
        """Whether targets address rank quantiles (hard_mining and mixed weigh rank buckets on either scale)."""
        return self.spec.target_scale == "quantile" and self.strategy.ranks and self.scores is not None

    def select(self, epoch: int, target: float) -> np.ndarray:
        """Indices of 1-based `epoch` (see draw)."""
        return self.draw(epoch, target)[0]

    def draw(self, epoch: int, target: float) -> tuple[np.ndarray, np.ndarray | None]:
        """(indices, importance weights per sample or None) of 1-based `epoch`, seeded by (seed, epoch). On the
        quantile scale the scores are replaced by their rank quantiles and the target by its place on them; the
        selection rules themselves stay the same."""
        rng = seeds.generator(self.seed, "selection", epoch=epoch)
        scores = self.scores
        if self.by_rank():
            scores, target = rank_quantiles(scores), self.strategy.rank_target(target)
        return self.strategy.select(epoch, target, Pool(self.num_samples, scores, self.losses), rng)

    def target_difficulty(self, target: float) -> float:
        """The difficulty a target points at: itself on the absolute scale, the score at its quantile otherwise."""
        if not self.by_rank():
            return target
        return float(np.quantile(self.scores, self.strategy.rank_target(target)))

    def epoch_stats(self, chosen: np.ndarray, target: float | None) -> dict:
        """The metrics.csv columns of an epoch's selection: `target` as given (on the run's target scale) and
        `target_difficulty`, the difficulty it pointed at."""
        stats = {"target": "", "target_difficulty": "", "selected": len(chosen)}
        if target is not None:
            stats["target"], stats["target_difficulty"] = target, self.target_difficulty(target)
        stats.update(self.selection_extras(chosen))
        if self.scores is None:
            return stats
        selected = self.scores[chosen] if len(chosen) else np.full(1, np.nan)
        stats["difficulty_selected"] = float(selected.mean())
        stats["difficulty_selected_min"], stats["difficulty_selected_max"] = (
            float(selected.min()),
            float(selected.max()),
        )
        stats["difficulty_all"] = float(self.scores.mean())
        for name, values in self.components.items():
            stats[f"difficulty_{name}"] = float(values.mean())
        return stats

    def gate_stats(self, plan: EpochPlan) -> dict:
        """metrics.csv columns of runs that may gate labels: the epoch's `label_gate`, `labels_kept` (the mean factor
        on the label term over the epoch's draws) and with --label-noise `noisy_label_weight` (the share of that
        weight on replaced labels; no gate: about the noise rate)."""
        if self.label_gates == ("all",):
            return {}
        chosen = plan.indices
        factors = self.gate_tables[plan.gate][chosen] if plan.gate != "all" else np.ones(len(chosen))
        stats = {"label_gate": plan.gate, "labels_kept": float(factors.mean()) if len(chosen) else float("nan")}
        if self.flipped is not None:
            kept = factors.sum()
            stats["noisy_label_weight"] = float((factors * self.flipped[chosen]).sum() / kept) if kept else 0.0
        return stats

    def selection_extras(self, chosen: np.ndarray) -> dict:
        """Columns only some runs have: `noisy_selected`, the share of the epoch's draws whose label --label-noise
        replaced; for reducible and prioritised the mean reducible loss of the draws and of all samples, and for
        prioritised the number of distinct samples drawn."""
        extras = {}
        if self.flipped is not None:
            extras["noisy_selected"] = float(self.flipped[chosen].mean()) if len(chosen) else 0.0
        if self.needs_losses and self.losses:
            reducibles = reducible_loss(self.losses["student"], self.losses["teacher"])
            extras["reducible_selected"] = float(reducibles[chosen].mean()) if len(chosen) else float("nan")
            extras["reducible_all"] = float(reducibles.mean())
        return {**extras, **self.strategy.extras(chosen)}

    def state_dict(self) -> dict:
        return {
            "scores": self.scores,
            "components": self.components,
            "losses": self.losses,
            "coverage": self.coverage,
            "scored_epoch": self.scored_epoch,
            "history": self.history,
            "trained_epoch": self.trained_epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        state = arrays(state)  # a checkpoint holds them as tensors (common.files.plain)
        self.scores, self.components = state["scores"], state["components"]
        self.losses = state.get("losses", {})  # absent from checkpoints written before the reducible strategies
        self.coverage, self.scored_epoch = state["coverage"], state["scored_epoch"]
        self.history, self.trained_epoch = state["history"], state["trained_epoch"]
