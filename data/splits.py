"""Datasets and transforms: mini-imagenet from the hub, local folders, and the built-in synthetic set (synthetic.py).

Every split is a `SampleView` that yields `(image_tensor, label, index)`; the index lets the curriculum look up a
sample's difficulty, cached teacher logits and coverage. Class names are ImageNet WordNet ids (e.g. `n01532829`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from common import seeds
from common.errors import UserError
from data.sources import (
    Relabelled,
    SubsetSource,
    folder_fingerprint,
    is_hub_name,
    load_hub,
    load_image_folder,
    load_parquet_folder,
)
from data.synthetic import SyntheticImages, parse_synthetic, synthetic_class_ids, synthetic_class_names
from data.transforms import eval_transform, train_transform

# ----------------------------------------------------------------------------------------------------------------------
# Transforms (the one place they are defined)


# ----------------------------------------------------------------------------------------------------------------------
# Raw image sources: `len`, `labels` (np.int64 array) and `image(i) -> PIL.Image` in RGB.


# ----------------------------------------------------------------------------------------------------------------------
# Views: a source plus a transform; what DataLoaders see.


class SampleView(Dataset):
    """`(transform(image), label, index)` for each sample of a source.

    A training view is indexed with `(index, epoch)` pairs (see curriculum_dataloader.EpochSampler): the augmentation
    of a sample is then seeded by (seed, epoch, index), so a run is reproducible whatever the worker count, the number
    of ranks or a resume in between.
    """

    def __init__(self, source, transform, seed: int = 0):
        self.source, self.transform, self.seed = source, transform, seed

    def __len__(self) -> int:
        return len(self.source)

    @property
    def labels(self) -> np.ndarray:
        return self.source.labels

    def __getitem__(self, key):
        if isinstance(key, tuple):
            index, epoch = key
            state = torch.get_rng_state()
            torch.manual_seed(seeds.derive(self.seed, "augment", epoch=epoch, index=index))
            try:
                image = self.load(index)
            finally:
                torch.set_rng_state(state)
        else:
            index = key
            image = self.load(index)
        return image, int(self.source.labels[index]), index

    def load(self, index: int):
        return self.transform(self.source.image(index))


@dataclass
class DataSplits:
    train: SampleView  # augmented training images
    score: SampleView  # the same training images through the eval transform (for difficulty scoring)
    val: SampleView
    test: SampleView
    class_names: list[str]  # WordNet ids, in label order
    image_size: int
    identity: str  # what the data is, for cache keys and resume checks
    hardness: np.ndarray | None = None  # synthetic only: the generator's per-sample hardness of the train split
    flipped: np.ndarray | None = None  # --label-noise: which training labels were replaced (bool per sample)


NOISE_KINDS = ("symmetric", "confusable")


def noisy_labels(labels: np.ndarray, num_classes: int, fraction: float, seed, source=None, kind: str = "symmetric"):
    """Label noise on one split: exactly `round(fraction * N)` samples, chosen from `seed`, get another class.

    `symmetric` (as in Zhang et al. 2017, "Understanding deep learning requires rethinking generalization"): the
    samples drawn uniformly, each new class uniformly from the K - 1 others. `confusable` (instance-dependent, as an
    annotator errs): the samples drawn with probability proportional to how ambiguous the image is, each given the
    class the image resembles: the synthetic generator's `hardness` and `distractors` (`source`)."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    count = round(fraction * len(labels))
    noisy = labels.copy()
    if kind == "symmetric":
        flipped = rng.choice(len(labels), size=count, replace=False)
        noisy[flipped] = (labels[flipped] + rng.integers(1, num_classes, size=len(flipped))) % num_classes
        return noisy
    weights = np.asarray(source.hardness, dtype=np.float64) + 1e-12  # every sample possible; ties to nothing
    flipped = rng.choice(len(labels), size=count, replace=False, p=weights / weights.sum())
    noisy[flipped] = np.asarray(source.distractors)[flipped]
    return noisy


def data_subset(data: DataSplits, share: float, seed: int, val_share: float | None = None) -> DataSplits:
    """A seeded `share` of the training images (both views) and `val_share` (default: `share`) of the validation
    images; a data identity of its own, so its teacher logits are cached apart from the full set's."""
    val_share = share if val_share is None else val_share

    def pick(view, fraction: float, salt: int) -> np.ndarray:
        count = max(1, round(fraction * len(view)))
        return np.sort(seeds.generator(seed, "subset", index=salt).choice(len(view), count, replace=False))

    def part(view, indices: np.ndarray) -> SampleView:
        return SampleView(SubsetSource(view.source, indices), view.transform, view.seed)

    train, val = pick(data.train, share, 0), pick(data.val, val_share, 1)
    identity = {"subset_of": data.identity, "share": share, "seed": seed}
    if val_share != share:  # only then: a run of an older version (one share for both) keeps its identity
        identity["val_share"] = val_share
    return dataclasses.replace(
        data,
        train=part(data.train, train),
        score=part(data.score, train),
        val=part(data.val, val),
        identity=json.dumps(identity, sort_keys=True),
        hardness=data.hardness[train] if data.hardness is not None else None,
        flipped=data.flipped[train] if data.flipped is not None else None,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Loading


def add_label_noise(sources: dict, num_classes: int, noise: LabelNoise) -> np.ndarray | None:
    """Replace `noise.train` of the training labels and `noise.val` of the validation labels (noisy_labels) in place
    of their sources; the training split's flipped mask, or None without training noise. The test labels stay."""
    for split, fraction, salt in (("train", noise.train, None), ("val", noise.val, 1)):
        if not fraction:
            continue
        source = sources[split]
        if noise.kind == "confusable" and not hasattr(source, "distractors"):
            raise UserError(
                "--label-noise-kind confusable mislabels an image as the class it resembles, which only the synthetic "
                "data knows; use --label-noise-kind symmetric with this --data."
            )
        seed = noise.seed if salt is None else [noise.seed, salt]  # the training draw is that of earlier versions
        sources[split] = Relabelled(
            source, noisy_labels(source.labels, num_classes, fraction, seed, source, noise.kind)
        )
    if not noise.train:
        return None
    return sources["train"].labels != sources["train"].source.labels


@dataclass(frozen=True)
class LabelNoise:
    """Injected label noise: the share of training and of validation labels replaced, how (NOISE_KINDS), and the
    seed that chooses them (a run's --seed: every run at a seed sees the same noise)."""

    train: float = 0.0
    val: float = 0.0
    kind: str = "symmetric"
    seed: int = 0


def load_data(
    data: str,
    image_size: int | None = None,
    seed: int = 0,
    min_scale: float | None = None,
    *,
    noise: LabelNoise = LabelNoise(),
) -> DataSplits:
    """Build the four views of `--data`: `synthetic[:options]`, a hub name like `timm/mini-imagenet`, or a folder,
    with `noise` injected into the training and validation labels."""
    hardness = None
    if data == "synthetic" or data.startswith("synthetic:"):
        options = parse_synthetic(data)
        sources = {
            split: SyntheticImages(
                synthetic_class_ids(options["classes"]),
                options["size"],
                options[split],
                options["seed"],
                split,
                options["jitter"],
                options["draw"],
            )
            for split in ("train", "val", "test")
        }
        class_names = synthetic_class_names(options["classes"])
        hardness = sources["train"].hardness
        native_size, default_min_scale = options["size"], 0.5  # tiny images: keep most of the pattern in the crop
        named = {key: value for key, value in options.items() if key != "draw" or value}  # draw 0: earlier identity
        identity = json.dumps({"synthetic": named, "generator": 2}, sort_keys=True)
    else:
        path = Path(data).expanduser()
        if path.is_dir():
            is_parquet = next(path.rglob("*.parquet"), None) is not None
            sources, class_names = load_parquet_folder(path) if is_parquet else load_image_folder(path)
            identity = json.dumps({"folder": str(path.resolve()), "files": folder_fingerprint(sources)})
        elif is_hub_name(data):
            sources, class_names = load_hub(data)
            identity = json.dumps({"hub": data, "files": folder_fingerprint(sources)})
        else:
            raise UserError(
                f"--data {data} is neither a folder, a hub dataset (timm/mini-imagenet) nor 'synthetic'; "
                "check the path."
            )
        native_size, default_min_scale = 224, 0.08
    size = image_size or native_size
    min_scale = default_min_scale if min_scale is None else min_scale
    # The noise stays out of `identity`: what is keyed by it (the teacher's logits, the stored views) depends on the
    # images alone, and a run's config records --label-noise and --seed, which fix the noise for its resume checks.
    flipped = add_label_noise(sources, len(class_names), noise)
    return DataSplits(
        train=SampleView(sources["train"], train_transform(size, min_scale), seed),
        score=SampleView(sources["train"], eval_transform(size)),
        val=SampleView(sources["val"], eval_transform(size)),
        test=SampleView(sources["test"], eval_transform(size)),
        class_names=class_names,
        image_size=size,
        identity=identity,
        hardness=hardness,
        flipped=flipped,
    )
