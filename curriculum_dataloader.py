"""Curriculum data selection: the difficulty scores of the training set, the per-epoch sampling strategies, and
when the scores are refreshed.

A strategy turns the current difficulty scores (docs/formulas.md, `models.sample_difficulty`) into the list of
training samples of one epoch; `EpochSampler` feeds that list to a DataLoader in a seeded order. The trainer calls a
`Curriculum` twice an epoch: `plan_epoch` (what to train on; it rescores first when its scores are due) and
`end_epoch` (the logits of the training steps it asked for, and what was trained).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Sampler

import models
import seeds

STRATEGIES = (
    "none", "adaptive", "easy_to_hard", "hard_to_easy", "hard_mining", "mixed", "random_subset", "soft", "reducible",
    "prioritised",
)  # fmt: skip
PACINGS = ("linear", "root", "geometric")
REFERENCED = ("reducible", "prioritised")  # strategies that rank by the reducible loss (the teacher as reference)
SCORED = {"adaptive", "easy_to_hard", "hard_to_easy", "hard_mining", "mixed", "soft", *REFERENCED}  # read scores
TARGETED = ("adaptive", "soft", "mixed", "hard_mining")  # strategies a target difficulty steers (the RL agent's)
TARGET_SCALES = ("quantile", "absolute")  # how a target addresses the scores: by rank, or by difficulty value
BUCKETS = 5  # difficulty quantile buckets of hard_mining and mixed
SOFT_WIDTH = 0.15  # soft: std of the Gaussian weight around the target, in difficulty units
SOFT_FLOOR = 0.05  # soft: weight every sample keeps, however far from the target
LOSSES = ("student", "teacher")  # the label losses (CE against the training label) the reducible loss subtracts
PRIORITY_FLOOR = 0.1  # prioritised: share every sample keeps, in units of the mean clipped reducible loss


def scores_from_train_pass(strategy: str, score_source: str) -> bool:
    """Whether the training steps' own logits refresh the scores of the samples they train on (--score-source)."""
    return score_source == "train-pass" and strategy in SCORED


# ----------------------------------------------------------------------------------------------------------------------
# Selection rules (plain functions of scores; tested against hand-worked cases)


def select_around(scores: np.ndarray, target: float, fraction: float) -> np.ndarray:
    """The `round(fraction * N)` samples whose difficulty is nearest `target`, as sorted indices.

    Ties in distance go to the lower index (stable sort), so equal inputs give equal selections.
    """
    scores = np.asarray(scores, dtype=np.float64)
    count = round(fraction * len(scores))
    nearest = np.argsort(np.abs(scores - target), kind="stable")[:count]
    return np.sort(nearest)


def rank_quantiles(scores: np.ndarray) -> np.ndarray:
    """Each sample's rank among the scores as a fraction: 0 for the easiest, 1 for the hardest (ties by index)."""
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="stable")] = np.arange(len(scores))
    return ranks / max(len(scores) - 1, 1)


def quantile_target(strategy: str, target: float, fraction: float) -> float:
    """Where a quantile-scale target points on the rank scale. adaptive: the centre of its band of `fraction` of the
    ranks, from fraction / 2 (target 0: the easiest `fraction`) to 1 - fraction / 2 (target 1: the hardest), so every
    target selects another band; select_around would give one band to all targets within fraction / 2 of an end."""
    return fraction / 2 + target * (1 - fraction) if strategy == "adaptive" else target


def pacing(epoch: int, full_data_epoch: int, start_fraction: float, kind: str) -> float:
    """Fraction of the (easiest-first) data available at 0-based `epoch`; start_fraction at 0, 1 from
    `full_data_epoch` (T, a count of epochs) on.

    linear: c0 + (1 - c0) t/T; root (Platanios et al. 2019, competence): sqrt(t (1 - c0^2) / T + c0^2);
    geometric: c0^(1 - t/T), which doubles the data at a constant rate.
    """
    t = min(epoch / max(full_data_epoch, 1), 1.0)
    if kind == "linear":
        return start_fraction + (1 - start_fraction) * t
    if kind == "root":
        return min(1.0, math.sqrt(t * (1 - start_fraction**2) + start_fraction**2))
    if kind == "geometric":
        return start_fraction ** (1 - t)
    raise ValueError(f"unknown pacing {kind!r}; choose one of {PACINGS}")


def easiest(scores: np.ndarray, fraction: float) -> np.ndarray:
    count = round(fraction * len(scores))
    return np.sort(np.argsort(scores, kind="stable")[:count])


def hardest(scores: np.ndarray, fraction: float) -> np.ndarray:
    count = round(fraction * len(scores))
    return np.sort(np.argsort(-np.asarray(scores), kind="stable")[:count])


def weighted_subset(weights: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` distinct indices drawn with probability proportional to `weights` (Efraimidis & Spirakis 2006:
    keep the largest u^(1/w), computed as log(u) / w)."""
    keys = np.log(rng.random(len(weights))) / weights
    return np.sort(np.argpartition(-keys, count - 1)[:count]) if count else np.array([], dtype=np.int64)


def difficulty_buckets(scores: np.ndarray) -> np.ndarray:
    """Quantile bucket of each sample, 0 (easiest fifth) to BUCKETS - 1 (hardest fifth)."""
    ranks = np.argsort(np.argsort(scores, kind="stable"), kind="stable")
    return ranks * BUCKETS // len(scores)


def bucket_weights(strategy: str, target: float) -> np.ndarray:
    """hard_mining: weight grows with difficulty, the more so the higher the target (target 0 = uniform, target 1 =
    the hardest bucket 16x the easiest); mixed: a Gaussian over buckets centred on the target, every bucket kept."""
    position = np.arange(BUCKETS) / (BUCKETS - 1)
    if strategy == "hard_mining":
        return 16.0 ** (target * position)
    return np.exp(-((position - target) ** 2) / (2 * 0.25**2)) + 0.05


def soft_weights(scores: np.ndarray, target: float) -> np.ndarray:
    """Gaussian closeness to the target plus a floor: no sample's probability is ever 0."""
    return SOFT_FLOOR + np.exp(-((np.asarray(scores) - target) ** 2) / (2 * SOFT_WIDTH**2))


def reducible_loss(student_loss: np.ndarray, teacher_loss: np.ndarray) -> np.ndarray:
    """RHO-LOSS's selection score (Mindermann et al. 2022, "Prioritized training on points that are learnable, worth
    learning, and not yet learnt"): the learner's loss minus an irreducible-loss model's, here the teacher's
    cross-entropy on the same label. High: the student has not learnt what the teacher shows is learnable. Low:
    learnt already, or a label that even the teacher finds wrong (noise)."""
    return np.asarray(student_loss, dtype=np.float64) - np.asarray(teacher_loss, dtype=np.float64)


def reducible(student_loss: np.ndarray, teacher_loss: np.ndarray, fraction: float) -> np.ndarray:
    """The `round(fraction * N)` samples of highest reducible loss, as sorted indices (ties to the lower index)."""
    return hardest(reducible_loss(student_loss, teacher_loss), fraction)


def prioritised_sample(
    priorities: np.ndarray, count: int, rng: np.random.Generator, floor: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """`count` draws with replacement, sample i with probability p_i proportional to max(priority_i, 0) + floor x
    their mean (every sample stays reachable), and the importance weights `1 / (N p_i)` that make the weighted mean
    loss of the draws an unbiased estimate of the mean loss over all N samples (Katharopoulos & Fleuret 2018, "Not all
    samples are created equal"; Schaul et al. 2016, prioritized replay). Returns (indices, weights)."""
    priorities = np.clip(np.asarray(priorities, dtype=np.float64), 0.0, None)
    mean = priorities.mean()
    shares = priorities + floor * (mean if mean > 0 else 1.0)
    probabilities = shares / shares.sum()
    indices = rng.choice(len(priorities), size=count, replace=True, p=probabilities)
    return indices, 1.0 / (len(priorities) * probabilities[indices])


def label_losses(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Each sample's cross-entropy against its training label (noisy under --label-noise), the student's and the
    teacher's: the two terms of the reducible loss."""
    logits = {"student": student_logits, "teacher": teacher_logits}
    return {name: F.cross_entropy(logits[name].double(), labels, reduction="none").float() for name in LOSSES}


def select_samples(
    strategy: str,
    scores: np.ndarray | None,
    num_samples: int,
    rng: np.random.Generator,
    target: float,
    fraction: float,
    data_fraction: float,
) -> np.ndarray:
    """The training indices of one epoch. `data_fraction` is the pacing value of easy_to_hard / hard_to_easy."""
    count = round(fraction * num_samples)
    if strategy == "none":
        return np.arange(num_samples)
    if strategy == "random_subset":
        return np.sort(rng.choice(num_samples, size=count, replace=False))
    if strategy == "adaptive":
        return select_around(scores, target, fraction)
    if strategy == "easy_to_hard":
        return easiest(scores, data_fraction)
    if strategy == "hard_to_easy":
        return hardest(scores, data_fraction)
    if strategy in ("hard_mining", "mixed"):
        weights = bucket_weights(strategy, target)[difficulty_buckets(scores)]
        return weighted_subset(weights, count, rng)
    if strategy == "soft":
        return weighted_subset(soft_weights(scores, target), count, rng)
    if strategy in REFERENCED:
        raise ValueError(f"{strategy} ranks by label losses, not difficulty scores: Curriculum.draw selects it")
    raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")


# ----------------------------------------------------------------------------------------------------------------------
# The sampler


class EpochSampler(Sampler):
    """Batches of `(index, epoch)` pairs: this epoch's selected samples in an order seeded by (seed, epoch).

    The epoch travels with each index so the dataset seeds that sample's augmentation from (seed, epoch, index):
    reproducible with any number of DataLoader workers. With `world_size > 1` each rank takes a disjoint strided
    shard of the shuffled selection, so every selected sample is trained exactly once per epoch (ranks may differ by
    one sample; DDP's join() evens out the step counts). A shard is cut into ceil(n / batch_size) batches of nearly
    equal size, so no epoch ends on a batch of one (which BatchNorm cannot train on).
    """

    def __init__(self, num_samples: int, seed: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.seed, self.batch_size, self.rank, self.world_size = seed, batch_size, rank, world_size
        self.indices = np.arange(num_samples)
        self.epoch = 0

    def set_epoch(self, epoch: int, indices: np.ndarray) -> None:
        self.epoch, self.indices = epoch, np.asarray(indices)

    def shard(self) -> np.ndarray:
        order = seeds.generator(self.seed, "order", epoch=self.epoch).permutation(self.indices)
        return order[self.rank :: self.world_size]

    def __iter__(self):
        shard = self.shard()
        for batch in np.array_split(shard, len(self)):
            yield [(int(i), self.epoch) for i in batch]

    def __len__(self) -> int:
        """Batches in this rank's shard; the same on every rank unless the shards straddle a multiple of the batch."""
        return max(1, math.ceil(len(range(self.rank, len(self.indices), self.world_size)) / self.batch_size))


# ----------------------------------------------------------------------------------------------------------------------
# Per-run curriculum state


class TrainPassScores:
    """Difficulty of the samples a training epoch saw, from the logits its steps already computed (the online
    teacher's and the student's on the augmented batch): fresh scores at no extra forward pass."""

    def __init__(self, num_samples: int, device: torch.device, labels: torch.Tensor | None = None):
        """`labels`: the training labels, given when the strategy also needs each sample's label losses."""
        self.components = {name: torch.zeros(num_samples, device=device) for name in models.DIFFICULTY_WEIGHTS}
        self.labels = None if labels is None else torch.as_tensor(labels, device=device)
        self.losses = {} if labels is None else {name: torch.zeros(num_samples, device=device) for name in LOSSES}
        self.trained = torch.zeros(num_samples, device=device)

    def record(self, indices: torch.Tensor, teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> None:
        for name, values in models.difficulty_components(teacher_logits, student_logits).items():
            self.components[name][indices] = values
        if self.labels is not None:
            for name, values in label_losses(teacher_logits, student_logits, self.labels[indices]).items():
                self.losses[name][indices] = values
        self.trained[indices] = 1.0

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
    seen: torch.Tensor  # the steps count each sample they train on: seen[index] += 1
    recorder: TrainPassScores | None  # takes the steps' logits when train-pass scores are on
    weights: torch.Tensor | None = None  # prioritised: each sample's importance weight on its loss (by index)

    @property
    def on_logits(self):
        return self.recorder.record if self.recorder is not None else None


class Curriculum:
    """The difficulty scores of the training set, the chosen strategy, what it selected (coverage), and when and
    which scores are refreshed: the trainer only supplies the logits."""

    def __init__(
        self,
        strategy: str,
        num_samples: int,
        seed: int,
        *,
        fraction: float,
        pacing_kind: str,
        start_fraction: float,
        full_data_epoch: int,
        rescore_every: int = 5,
        score_source: str = "pass",
        target_scale: str = "quantile",
        labels: np.ndarray | None = None,
        flipped: np.ndarray | None = None,
    ):
        """`labels`: the training labels the reducible loss is measured on (reducible, prioritised); `flipped`: which
        of them --label-noise replaced (only for the metrics: the share of noisy samples an epoch trained on)."""
        if strategy in REFERENCED and labels is None:
            raise ValueError(f"the {strategy} strategy needs the training labels")
        self.strategy, self.num_samples, self.seed = strategy, num_samples, seed
        self.labels, self.flipped = labels, flipped
        self.target_scale = target_scale
        self.fraction, self.pacing_kind = fraction, pacing_kind
        self.start_fraction, self.full_data_epoch = start_fraction, full_data_epoch
        self.rescore_every, self.score_source = rescore_every, score_source
        self.scores: np.ndarray | None = None
        self.components: dict[str, np.ndarray] = {}
        self.losses: dict[str, np.ndarray] = {}  # reducible, prioritised: each sample's CE, "student" and "teacher"
        self.coverage = np.zeros(num_samples, dtype=np.int64)
        self.scored_epoch = 0
        self.history: dict[str, np.ndarray] = {}  # "epoch_E": the scores used from epoch E + 1 on (fp16)
        self.trained_epoch = np.zeros(num_samples, dtype=np.int64)  # the last epoch each sample was trained in

    @property
    def needs_scores(self) -> bool:
        return self.strategy in SCORED

    @property
    def needs_losses(self) -> bool:
        return self.strategy in REFERENCED

    @property
    def scores_from_train_pass(self) -> bool:
        return scores_from_train_pass(self.strategy, self.score_source)

    def due(self, epoch: int) -> bool:
        """Scores are refreshed before the first epoch and then every rescore_every epochs (`epoch`: epochs done)."""
        if not self.needs_scores:
            return False
        return self.scores is None or epoch - self.scored_epoch >= self.rescore_every

    def stale(self, epoch: int) -> np.ndarray | None:
        """The samples a due refresh must score: None for all of them; with train-pass scores only those the last
        epoch did not train on (the rest were scored by its training steps)."""
        if not self.scores_from_train_pass or self.scores is None:
            return None
        return np.flatnonzero(self.trained_epoch != epoch)

    def plan_epoch(self, epoch: int, target: float, score_pass, device: torch.device) -> EpochPlan:
        """What 1-based `epoch` trains on, around `target`: the scores are refreshed first when due (`score_pass`,
        see refresh_scores), and the plan carries what the epoch's training steps must hand back (end_epoch)."""
        self.refresh_scores(epoch - 1, score_pass)
        recorder = None
        if self.scores_from_train_pass:
            recorder = TrainPassScores(self.num_samples, device, self.labels if self.needs_losses else None)
        seen = torch.zeros(self.num_samples, dtype=torch.long, device=device)
        stats_target = target if self.strategy in TARGETED else None
        indices, weights = self.draw(epoch, target)
        weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float32, device=device)
        return EpochPlan(epoch, indices, stats_target, seen, recorder, weights)

    def end_epoch(self, plan: EpochPlan, reduce=lambda tensor: tensor) -> dict:
        """Take what the epoch's steps trained on and the logits the plan asked for (`reduce`: the sum across
        processes); returns the epoch's metrics.csv columns (epoch_stats)."""
        self.count_trained(reduce(plan.seen).cpu().numpy(), plan.indices, plan.epoch)
        if plan.recorder is not None:
            indices, components, losses = plan.recorder.collect(reduce)
            self.update_some(indices, components, plan.epoch, losses)
        return self.epoch_stats(plan.indices, plan.target)

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
        return label_losses(teacher_logits, student_logits, torch.as_tensor(labels))

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
        return self.target_scale == "quantile" and self.strategy in ("adaptive", "soft") and self.scores is not None

    def select(self, epoch: int, target: float) -> np.ndarray:
        """Indices of 1-based `epoch` (see draw)."""
        return self.draw(epoch, target)[0]

    def draw(self, epoch: int, target: float) -> tuple[np.ndarray, np.ndarray | None]:
        """(indices, importance weights per sample or None) of 1-based `epoch`, seeded by (seed, epoch). On the
        quantile scale the scores are replaced by their rank quantiles and the target by its place on them; the
        selection rules themselves stay the same. reducible and prioritised rank by the reducible loss instead."""
        rng = seeds.generator(self.seed, "selection", epoch=epoch)
        if self.strategy == "reducible":
            return reducible(self.losses["student"], self.losses["teacher"], self.fraction), None
        if self.strategy == "prioritised":
            priorities = reducible_loss(self.losses["student"], self.losses["teacher"])
            indices, drawn_weights = prioritised_sample(
                priorities, round(self.fraction * self.num_samples), rng, PRIORITY_FLOOR
            )
            weights = np.ones(self.num_samples)  # a table by sample index: the training steps look their batch up
            weights[indices] = drawn_weights
            return np.sort(indices), weights
        data_fraction = pacing(epoch - 1, self.full_data_epoch, self.start_fraction, self.pacing_kind)
        scores = self.scores
        if self.by_rank():
            scores, target = rank_quantiles(scores), quantile_target(self.strategy, target, self.fraction)
        return select_samples(self.strategy, scores, self.num_samples, rng, target, self.fraction, data_fraction), None

    def target_difficulty(self, target: float) -> float:
        """The difficulty a target points at: itself on the absolute scale, the score at its quantile otherwise."""
        if not self.by_rank():
            return target
        return float(np.quantile(self.scores, quantile_target(self.strategy, target, self.fraction)))

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
        if self.strategy == "prioritised":
            extras["distinct_selected"] = len(np.unique(chosen))
        return extras

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
        self.scores, self.components = state["scores"], state["components"]
        self.losses = state.get("losses", {})  # absent from checkpoints written before the reducible strategies
        self.coverage, self.scored_epoch = state["coverage"], state["scored_epoch"]
        self.history, self.trained_epoch = state["history"], state["trained_epoch"]
