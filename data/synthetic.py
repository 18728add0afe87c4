"""The built-in synthetic data set: procedural images, generated on the fly, whose classes carry real ImageNet ids.

`--data synthetic[:options]` (parse_synthetic) builds one SyntheticImages source per split; data.load_data wraps them
in views like any other source.
"""

from __future__ import annotations

import zlib

import numpy as np
from PIL import Image

from common.errors import UserError


def parse_synthetic(spec: str) -> dict:
    """`synthetic` or `synthetic:classes=10,train=2000,val=500,test=500,size=32,seed=0,jitter=0,draw=0`.

    `seed` fixes what the classes look like (the teacher's pretraining set shares it); `draw` which images each split
    holds: two draws are two data sets of the same classes (draw 0 is the set of earlier versions)."""
    options = {"classes": 10, "train": 2000, "val": 500, "test": 500, "size": 32, "seed": 0, "jitter": 0.0, "draw": 0}
    _, _, rest = spec.partition(":")
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        number = value.replace(".", "", 1) if key == "jitter" else value  # jitter (radians) alone is a float
        if key not in options or not number.isdigit():
            raise UserError(
                f"bad synthetic option {item!r} in --data {spec}; use e.g. "
                "synthetic:classes=10,train=2000,val=500,test=500,size=32,seed=0,jitter=0.3,draw=0."
            )
        options[key] = float(value) if key == "jitter" else int(value)
    if not 2 <= options["classes"] <= 1000 or min(options["train"], options["val"], options["test"]) < 1:
        raise UserError(f"--data {spec} needs 2..1000 classes and at least one image per split.")
    if options["size"] < 8:
        raise UserError(f"--data {spec} needs size >= 8 pixels.")
    return options


def synthetic_class_ids(count: int) -> list[int]:
    """ImageNet-1k indices evenly spaced over the 1000 classes: 10 classes are every 100th, 100 every 10th, so a
    set whose class count divides another's (10 of 20, 50, 100, ...) names a subset of its classes."""
    return [i * (1000 // count) for i in range(count)]


def synthetic_class_names(count: int) -> list[str]:
    """Real ImageNet-1k WordNet ids, so an ImageNet teacher (or a wider synthetic one) can be sliced by id."""
    from timm.data import ImageNetInfo

    names = ImageNetInfo().label_names()
    return [names[i] for i in synthetic_class_ids(count)]


class SyntheticImages:
    """Procedural images generated on the fly, deterministic from (seed, split, index).

    Each class is a coloured sinusoidal grating whose orientation, frequency and colour are drawn from
    (seed, the class's ImageNet-1k index), so a class looks the same in every synthetic set that names it: a set of
    10 classes is a slice of a set of 100 (how the synthetic teacher's pretraining set contains the students' classes).
    Every sample varies its class's prototype (orientation +-`jitter` rad, frequency, colour, phase), and has a
    latent hardness h in [0, 1]: the image blends in a distractor class's grating (weight 0.55 h), adds Gaussian
    noise (std 0.35 h) and, with probability h, a grey occluding square. Easy samples are near the prototype; hard
    ones are genuinely ambiguous, so a trained teacher is confident on some and unsure on others, and a model that
    saw few samples per class has not seen the range of each class.
    """

    def __init__(
        self, class_ids: list[int], size: int, count: int, seed: int, split: str, jitter: float = 0.0, draw: int = 0
    ):
        class_count = len(class_ids)
        self.class_count, self.size, self.seed, self.jitter = class_count, size, seed, jitter
        # sets of different class counts draw different samples: a pretraining set never holds the students' images;
        # another draw, other samples of the same classes
        self.split_seed = zlib.crc32(f"{seed}/{split}/{class_count}{f'/draw{draw}' if draw else ''}".encode())
        rng = np.random.default_rng(self.split_seed)
        self.labels = rng.integers(0, class_count, size=count).astype(np.int64)
        self.hardness = rng.random(count)
        # the class each image blends in (its most confusable class: what --label-noise-kind confusable mislabels it as)
        self.distractors = (self.labels + rng.integers(1, class_count, size=count)) % class_count
        styles = [np.random.default_rng([seed, class_id]) for class_id in class_ids]  # shared by all splits and sets
        self.colours = np.array([style.uniform(0.15, 1.0, size=3) for style in styles])
        self.angles = np.array([style.uniform(0, np.pi) for style in styles])
        self.frequencies = np.array([style.uniform(1.5, 4.0) for style in styles])
        yy, xx = np.mgrid[0:size, 0:size] / size
        self.grid = (xx, yy)
        self._pixels: dict[int, np.ndarray] = {}  # generated images (3 KB at 32 px), reused by later epochs

    def __len__(self) -> int:
        return len(self.labels)

    def _grating(self, c: int, rng: np.random.Generator) -> np.ndarray:
        xx, yy = self.grid
        angle = self.angles[c] + self.jitter * rng.uniform(-1, 1)
        frequency = self.frequencies[c] * (1 + 0.5 * self.jitter * rng.uniform(-1, 1))
        colour = np.clip(self.colours[c] + 0.5 * self.jitter * rng.uniform(-1, 1, size=3), 0, 1)
        along = xx * np.cos(angle) + yy * np.sin(angle)
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * frequency * along + rng.uniform(0, 2 * np.pi))
        return wave[..., None] * colour

    def image(self, i: int) -> Image.Image:
        if i not in self._pixels:  # generating costs more than a small model's step: once per process
            self._pixels[i] = self._generate(i)
        return Image.fromarray(self._pixels[i])

    def _generate(self, i: int) -> np.ndarray:
        rng = np.random.default_rng([self.split_seed, i])
        h = self.hardness[i]
        mix = 0.55 * h
        pixels = (1 - mix) * self._grating(self.labels[i], rng)
        pixels += mix * self._grating(self.distractors[i], rng)
        pixels += rng.normal(0.0, 0.35 * h, size=pixels.shape)
        if rng.random() < h:
            side = max(1, int(self.size * 0.45 * h))
            top, left = rng.integers(0, self.size - side + 1, size=2)
            pixels[top : top + side, left : left + side] = 0.5
        return (np.clip(pixels, 0, 1) * 255).astype(np.uint8)
