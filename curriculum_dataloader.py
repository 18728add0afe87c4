"""Curriculum data selection: the sampling strategies, what feeds their choice, and the sampler that hands it to a
loader.

A strategy turns the current difficulty scores (docs/formulas.md, `models.sample_difficulty`) or the label losses into
the training samples of one epoch. Each is one class below, found by name in `STRATEGIES`: it declares what it reads
(difficulty scores, each sample's label loss under the student and under the teacher as a reference model, a target)
and how it selects. The command line's choices, the sweep's rows and the strategy table of docs/curriculum.md come
from that table, so a new strategy is one class here (docs/extending.md). The scores, and when they are refreshed,
are a run's state (training/curriculum.py); `EpochSampler` feeds the selection to a DataLoader in a seeded order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np
import torch
from torch.utils.data import Sampler

from common import seeds
from common.errors import UserError

PACINGS = ("linear", "root", "geometric")
TARGET_SCALES = ("quantile", "absolute")  # how a target addresses the scores: by rank, or by difficulty value
SCORE_SOURCES = ("pass", "train-pass")
BUCKETS = 5  # difficulty quantile buckets of hard_mining and mixed
SOFT_WIDTH = 0.15  # soft: std of the Gaussian weight around the target, in difficulty units
SOFT_FLOOR = 0.05  # soft: weight every sample keeps, however far from the target
PRIORITY_FLOOR = 0.1  # prioritised: share every sample keeps, in units of the mean clipped reducible loss
# Label gates: which samples' label term a run keeps (label_gate); the teacher's term stays on every sample
LABEL_GATES = ("all", "none", "top1", "top2", "top3", "prob", "oracle")
TEACHER_GATES = ("top1", "top2", "top3", "prob")  # read the teacher's logits of the un-augmented training images


@dataclass(frozen=True)
class CurriculumSpec:
    """A run's curriculum settings (the --curriculum group of flags), as the strategy and the run's curriculum state
    take them."""

    strategy: str = "none"
    fraction: float = 0.7  # share of the training set an epoch selects
    target_scale: str = "quantile"
    pacing: str = "root"  # easy_to_hard / hard_to_easy
    start_fraction: float = 0.3
    full_data_epoch: int = 1  # T: the epoch count after which a paced strategy uses all the data
    rescore_every: int = 5
    score_source: str = "pass"
    label_gates: tuple[str, ...] = ("all",)  # the label gates a run may use, the first by default


class Pool(NamedTuple):
    """What a strategy chooses from in one epoch: N samples, their difficulty scores (as rank quantiles on the
    quantile scale; None before the first scoring) and, for the strategies that read them, each sample's label
    losses (`"student"`, `"teacher"`)."""

    size: int
    scores: np.ndarray | None
    losses: dict[str, np.ndarray]


class Selection(NamedTuple):
    """An epoch's samples (sorted indices; a sample drawn k times appears k times) and, for a strategy that weighs its
    draws, each sample's weight on its loss by index (None: every draw counts 1)."""

    indices: np.ndarray
    weights: np.ndarray | None = None


STRATEGIES: dict[str, type[Strategy]] = {}  # name -> class, in the order they are defined (the sweep's order)


class Strategy:
    """How the samples of one epoch are chosen. A subclass with a `name` is registered in STRATEGIES; it says what it
    reads and implements `select`. `summary` and `flags` are its row of the strategy table (docs/curriculum.md)."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # what each epoch trains on
    flags: ClassVar[str] = "`--fraction`"  # the flags that set it
    reads_scores: ClassVar[bool] = False  # difficulty scores: the teacher runs on the un-augmented training images
    reads_losses: ClassVar[bool] = False  # each sample's label loss, student's and teacher's (from the same pass)
    takes_target: ClassVar[bool] = False  # a target difficulty steers it (--target, or the RL agent's action)
    ranks: ClassVar[bool] = False  # on --target-scale quantile its scores and target are rank quantiles
    compared_at_targets: ClassVar[bool] = False  # the comparison sweep runs it at each of its --targets
    selects_all: ClassVar[bool] = False  # every sample, every epoch: no curriculum

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            STRATEGIES[cls.name] = cls

    def __init__(self, spec: CurriculumSpec):
        self.spec = spec

    def count(self, size: int) -> int:
        return round(self.spec.fraction * size)

    def select(self, epoch: int, target: float, pool: Pool, rng: np.random.Generator) -> Selection:
        """The samples of 1-based `epoch` around `target` (already on the scale of `pool.scores`); `rng` is the epoch's
        own generator (seeded by seed and epoch)."""
        raise NotImplementedError

    def rank_target(self, target: float) -> float:
        """Where a quantile-scale target points on the rank scale (strategies that rank)."""
        return target

    def smallest_epoch(self) -> tuple[str, float]:
        """(the flag that sets it, the share of the data) of this strategy's smallest epoch."""
        return "--fraction", self.spec.fraction

    def extras(self, chosen: np.ndarray) -> dict:
        """metrics.csv columns of its own about an epoch's draws."""
        return {}


def strategy_of(spec: CurriculumSpec) -> Strategy:
    """The strategy object a run's spec names (the registry's one lookup by name)."""
    if spec.strategy not in STRATEGIES:
        raise UserError(f"unknown curriculum strategy {spec.strategy!r}; choose one of {', '.join(STRATEGIES)}.")
    return STRATEGIES[spec.strategy](spec)


# ----------------------------------------------------------------------------------------------------------------------
# The strategies


class NoCurriculum(Strategy):
    name = "none"
    summary = "the whole shuffled training set (plain KD)"
    flags = ""
    selects_all = True

    def select(self, epoch, target, pool, rng):
        return Selection(np.arange(pool.size))

    def smallest_epoch(self):
        return "--data", 1.0


class RandomSubset(Strategy):
    name = "random_subset"
    summary = (
        "`fraction N` samples drawn uniformly: the control that separates a curriculum from simply seeing less data "
        "per epoch (Wu, Dyer & Neyshabur, ICLR 2021)"
    )

    def select(self, epoch, target, pool, rng):
        return Selection(np.sort(rng.choice(pool.size, size=self.count(pool.size), replace=False)))


class Adaptive(Strategy):
    name = "adaptive"
    summary = (
        "the `round(fraction N)` samples nearest the target (`select_around`; what the RL agent drives): on the "
        "default quantile scale a band of ranks, target 0 the easiest `fraction`, 1 the hardest"
    )
    flags = "`--target`, `--fraction` (0.7), `--target-scale`"
    reads_scores = takes_target = ranks = compared_at_targets = True

    def select(self, epoch, target, pool, rng):
        return Selection(select_around(pool.scores, target, self.spec.fraction))

    def rank_target(self, target):
        """The centre of the band of `fraction` of the ranks, from fraction / 2 (target 0: the easiest `fraction`) to
        1 - fraction / 2 (target 1: the hardest), so every target selects another band; select_around would give one
        band to all targets within fraction / 2 of an end."""
        return self.spec.fraction / 2 + target * (1 - self.spec.fraction)


class EasyToHard(Strategy):
    name = "easy_to_hard"
    summary = "the easiest `c(t) N` samples, `c` growing from `--start-fraction` to 1 by a pacing function"
    flags = "`--pacing linear\\|root\\|geometric`, `--start-fraction`, `--pace-epochs`"
    reads_scores = True

    def share(self, epoch: int) -> float:
        spec = self.spec
        return pacing(epoch - 1, spec.full_data_epoch, spec.start_fraction, spec.pacing)

    def select(self, epoch, target, pool, rng):
        return Selection(easiest(pool.scores, self.share(epoch)))

    def smallest_epoch(self):
        return "--start-fraction", self.spec.start_fraction  # the pacing's first, smallest epoch


class HardToEasy(EasyToHard):
    name = "hard_to_easy"
    summary = "the hardest `c(t) N` samples (anti-curriculum)"
    flags = "as above"

    def select(self, epoch, target, pool, rng):
        return Selection(hardest(pool.scores, self.share(epoch)))


class HardMining(Strategy):
    name = "hard_mining"
    summary = (
        "`fraction N` samples drawn over 5 difficulty-quantile buckets, harder buckets weighted up to 16x as the "
        "target rises"
    )
    flags = "`--target`, `--fraction`"
    reads_scores = takes_target = True

    def bucket_weights(self, target: float) -> np.ndarray:
        """Weight grows with difficulty, the more so the higher the target: target 0 uniform, target 1 the hardest
        bucket 16x the easiest."""
        position = np.arange(BUCKETS) / (BUCKETS - 1)
        return 16.0 ** (target * position)

    def select(self, epoch, target, pool, rng):
        weights = self.bucket_weights(target)[difficulty_buckets(pool.scores)]
        return Selection(weighted_subset(weights, self.count(pool.size), rng))


class Mixed(HardMining):
    name = "mixed"
    summary = "`fraction N` samples drawn with a Gaussian weight over buckets centred on the target; every bucket kept"

    def bucket_weights(self, target):
        position = np.arange(BUCKETS) / (BUCKETS - 1)
        return np.exp(-((position - target) ** 2) / (2 * 0.25**2)) + 0.05


class Soft(Strategy):
    name = "soft"
    summary = (
        "`fraction N` samples drawn with weight `0.05 + exp(-(d - target)^2 / (2 0.15^2))` (`d`: the rank quantile "
        "on the quantile scale): nearest the target most often, yet no sample ever has probability 0"
    )
    flags = "`--target`, `--fraction`, `--target-scale`"
    reads_scores = takes_target = ranks = True

    def select(self, epoch, target, pool, rng):
        return Selection(weighted_subset(soft_weights(pool.scores, target), self.count(pool.size), rng))


class Reducible(Strategy):
    name = "reducible"
    summary = (
        "the `round(fraction N)` samples of highest reducible loss `CE(student, y) - CE(teacher, y)` (RHO-LOSS with "
        "the teacher as reference; [below](#the-teacher-as-reference-model))"
    )
    reads_scores = reads_losses = True  # the label losses come with the scoring pass

    def select(self, epoch, target, pool, rng):
        return Selection(reducible(pool.losses["student"], pool.losses["teacher"], self.spec.fraction))


class Prioritised(Strategy):
    name = "prioritised"
    summary = (
        "`round(fraction N)` draws *with replacement*, `p_i` proportional to the clipped reducible loss plus a floor, "
        "each draw's loss weighted by `1 / (N p_i)`"
    )
    reads_scores = reads_losses = True

    def select(self, epoch, target, pool, rng):
        priorities = reducible_loss(pool.losses["student"], pool.losses["teacher"])
        indices, drawn_weights = prioritised_sample(priorities, self.count(pool.size), rng, PRIORITY_FLOOR)
        weights = np.ones(pool.size)  # a table by sample index: the training steps look their batch up
        weights[indices] = drawn_weights
        return Selection(np.sort(indices), weights)

    def extras(self, chosen):
        return {"distinct_selected": len(np.unique(chosen))}


def strategy_table() -> str:
    """The strategy table of docs/curriculum.md, from the registry."""
    rows = [f"| `{cls.name}` | {cls.summary} | {cls.flags} |" for cls in STRATEGIES.values()]
    return "\n".join(["| Strategy | Each epoch trains on | Parameters |", "|---|---|---|", *rows])


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


# ----------------------------------------------------------------------------------------------------------------------
# What feeds the choice besides the difficulty scores: label losses and label gates


def label_gate(gate: str, labels: np.ndarray, teacher_logits: torch.Tensor | None = None, flipped=None) -> np.ndarray:
    """Each training sample's factor in [0, 1] on the label term of the KD loss (models.kd_loss's `label_gate`):
    `all` 1 (plain KD), `none` 0 (the teacher's term alone), `topK` 1 where the label is among the teacher's K
    largest logits (a tie counts for the label: its rank is the number of classes the teacher scores strictly
    higher), `prob` the teacher's probability of the label, p_t(y) (temperature 1), and `oracle` 1 exactly where
    --label-noise left the label alone (`flipped`: which labels it replaced): a control that knows the noise."""
    labels = np.asarray(labels, dtype=np.int64)
    if gate in ("all", "none"):
        return np.full(len(labels), 1.0 if gate == "all" else 0.0)
    if gate == "oracle":
        if flipped is None:
            raise ValueError("the oracle gate needs to know the replaced labels: run with --label-noise")
        return 1.0 - np.asarray(flipped, dtype=np.float64)
    logits = torch.as_tensor(teacher_logits).double()
    own = logits.gather(1, torch.as_tensor(labels)[:, None])
    if gate == "prob":
        return (own - torch.logsumexp(logits, dim=1, keepdim=True)).exp()[:, 0].numpy()
    if gate in TEACHER_GATES:
        rank = (logits > own).sum(dim=1).numpy()
        return (rank < int(gate[3:])).astype(np.float64)
    raise ValueError(f"unknown label gate {gate!r}; choose one of {LABEL_GATES}")


def gate_precision_recall(gate: np.ndarray, flipped: np.ndarray) -> dict[str, float]:
    """How well a gate (factors in [0, 1]) drops the replaced labels, counting a factor g as 1 - g of a drop:
    `precision` the share of what it drops that was replaced, `recall` the share of the replaced labels it drops,
    `clean_kept` the share of the untouched labels it keeps, `noisy_weight` the share of the label term's weight
    left on replaced labels (no gate: the noise rate)."""
    gate, flipped = np.asarray(gate, dtype=np.float64), np.asarray(flipped, dtype=np.float64)
    dropped, clean = 1.0 - gate, 1.0 - flipped
    share = lambda part, whole: float(part.sum() / whole.sum()) if whole.sum() > 0 else float("nan")  # noqa: E731
    return {
        "precision": share(dropped * flipped, dropped),
        "recall": share(dropped * flipped, flipped),
        "clean_kept": share(gate * clean, clean),
        "noisy_weight": share(gate * flipped, gate),
    }


# ----------------------------------------------------------------------------------------------------------------------
# The sampler


class EpochSampler(Sampler):
    """Batches of `(index, epoch)` pairs: this epoch's selected samples in an order seeded by (seed, epoch).

    The epoch travels with each index so the dataset seeds that sample's augmentation from (seed, epoch, index):
    reproducible with any number of DataLoader workers. `batch_size` is the global batch: the ordered selection is
    cut into ceil(n / batch_size) batches of nearly equal size (so no epoch ends on a batch of one, which BatchNorm
    cannot train on), and with `world_size > 1` rank r takes every world_size-th sample of each, from the r-th. So
    every selected sample is trained exactly once per epoch, every rank trains the same number of batches, and the
    ranks' batches of a step together are the batch one process would train on at that step (parts may differ by one
    sample: `loss_scales` makes the step's gradient that of the whole batch).
    """

    def __init__(self, num_samples: int, seed: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.seed, self.batch_size, self.rank, self.world_size = seed, batch_size, rank, world_size
        self.indices = np.arange(num_samples)
        self.epoch = 0

    def set_epoch(self, epoch: int, indices: np.ndarray) -> None:
        self.epoch, self.indices = epoch, np.asarray(indices)

    def global_sizes(self) -> list[int]:
        """The sizes of this epoch's global batches, as np.array_split cuts them."""
        count = max(1, math.ceil(len(self.indices) / self.batch_size))
        small, extra = divmod(len(self.indices), count)
        return [small + 1] * extra + [small] * (count - extra)

    def part_size(self, size: int, rank: int) -> int:
        return len(range(rank, size, self.world_size))

    def __iter__(self):
        order = seeds.generator(self.seed, "order", epoch=self.epoch).permutation(self.indices)
        for batch in np.array_split(order, len(self.global_sizes())):
            part = batch[self.rank :: self.world_size]
            if len(part) or not len(order):
                yield [(int(i), self.epoch) for i in part]

    def __len__(self) -> int:
        return self.batches_of(self.rank)

    def batches_of(self, rank: int) -> int:
        """Batches `rank` trains this epoch: one per global batch, unless that batch has fewer samples than ranks."""
        return max(1, sum(self.part_size(size, rank) > 0 for size in self.global_sizes()))

    def uneven(self) -> bool:
        """Whether this epoch's ranks train different numbers of batches (the same answer on every rank)."""
        return len({self.batches_of(rank) for rank in range(self.world_size)}) > 1

    def loss_scales(self) -> list[float]:
        """What this rank's batch-mean loss is multiplied by at each step, part * world_size / global batch, so that
        DDP's mean of the ranks' gradients is the gradient of the global batch's mean loss (1.0 in one process)."""
        parts = [(self.part_size(size, self.rank), size) for size in self.global_sizes()]
        return [part * self.world_size / size for part, size in parts if part] or [1.0]  # an empty epoch: 1 batch


def check_epoch_size(strategy: Strategy, num_samples: int, world: int, batch_size: int) -> None:
    """Refuse, before any training, an epoch whose smallest training batch on a process would hold one sample
    (BatchNorm cannot train on it) or none: the strategy's smallest selection, split over batches and processes as
    EpochSampler splits it."""
    flag, fraction = strategy.smallest_epoch()
    count = round(fraction * num_samples)
    smallest_batch = count // max(1, math.ceil(count / batch_size)) // world
    if smallest_batch < 2:
        per = f" per process ({world} processes)" if world > 1 else ""
        raise UserError(
            f"{flag} selects {count} of {num_samples} training samples per epoch, which leaves a training batch of "
            f"{smallest_batch} sample(s){per} with --batch-size {batch_size} (BatchNorm needs 2); "
            f"raise {flag} or change --batch-size."
        )
