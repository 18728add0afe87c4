"""Curriculum data selection: the per-epoch sampling strategies, and the sampler that feeds their choice to a loader.

A strategy turns the current difficulty scores (docs/formulas.md, `models.sample_difficulty`) into the list of
training samples of one epoch; `EpochSampler` feeds that list to a DataLoader in a seeded order. The scores, and when
they are refreshed, are a run's state: curriculum.Curriculum.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Sampler

from common import seeds
from common.errors import UserError

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
# Label gates: which samples' label term a run keeps (label_gate); the teacher's term stays on every sample
LABEL_GATES = ("all", "none", "top1", "top2", "top3", "prob", "oracle")
TEACHER_GATES = ("top1", "top2", "top3", "prob")  # read the teacher's logits of the un-augmented training images


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


def label_gate(gate: str, labels: np.ndarray, teacher_logits: torch.Tensor | None = None, flipped=None) -> np.ndarray:
    """Each training sample's factor in [0, 1] on the label term of the KD loss (models.kd_loss's `label_gate`):
    `all` 1 (plain KD), `none` 0 (the teacher's term alone), `topK` 1 where the label is among the teacher's K
    largest logits (a tie counts for the label: its rank is the number of classes the teacher scores strictly
    higher), `prob` the teacher's probability of the label, p_t(y) (temperature 1), and `oracle` 1 exactly where
    --label-noise left the label alone (`flipped`: which labels it replaced): the ceiling of any noise filter."""
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


def check_epoch_size(config, num_samples: int, world: int) -> None:
    """Refuse, before any training, an epoch whose smallest training batch would hold one sample (BatchNorm cannot
    train on it) or none: the smallest selection of the strategy, split over processes and batches as EpochSampler
    splits it."""
    if config.curriculum in ("easy_to_hard", "hard_to_easy"):
        flag, fraction = "--start-fraction", config.start_fraction  # the pacing's first, smallest epoch
    elif config.curriculum == "none":
        flag, fraction = "--data", 1.0
    else:
        flag, fraction = "--fraction", config.fraction
    count = round(fraction * num_samples)
    shard = count // world
    smallest_batch = shard // max(1, math.ceil(shard / config.batch_size))
    if smallest_batch < 2:
        raise UserError(
            f"{flag} selects {count} of {num_samples} training samples per epoch, which leaves a training batch of "
            f"{smallest_batch} sample(s) with --batch-size {config.batch_size} (BatchNorm needs 2); "
            f"raise {flag} or change --batch-size."
        )
