"""Datasets and transforms: mini-imagenet from the hub, local folders, and the built-in synthetic set (synthetic.py).

Every split is a `SampleView` that yields `(image_tensor, label, index)`; the index lets the curriculum look up a
sample's difficulty, cached teacher logits and coverage. Class names are ImageNet WordNet ids (e.g. `n01532829`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import transforms

import hub
import seeds
from errors import UserError
from synthetic import SyntheticImages, parse_synthetic, synthetic_class_ids, synthetic_class_names

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
SPLIT_FOLDERS = {"train": ("train",), "val": ("validation", "val"), "test": ("test",)}
HUB_SPLITS = {"train": "train", "val": "validation", "test": "test"}


# ----------------------------------------------------------------------------------------------------------------------
# Transforms (the one place they are defined)


def train_transform(image_size: int, min_scale: float) -> transforms.Compose:
    """Reference augmentation: random resized crop, horizontal flip, light colour jitter, ImageNet normalisation."""
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(image_size, scale=(min_scale, 1.0), antialias=True),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def eval_transform(image_size: int) -> transforms.Compose:
    """Resize to image_size / 0.875 then centre-crop: the standard ImageNet evaluation view."""
    return transforms.Compose(
        [
            transforms.Resize(round(image_size / 0.875), antialias=True),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def pixel_part(transform: transforms.Compose) -> transforms.Compose:
    """The steps of a transform before ToTensor: what it does to the PIL image (views.py stores their uint8 result)."""
    steps = transform.transforms
    return transforms.Compose(steps[: next(i for i, step in enumerate(steps) if isinstance(step, transforms.ToTensor))])


# ----------------------------------------------------------------------------------------------------------------------
# Raw image sources: `len`, `labels` (np.int64 array) and `image(i) -> PIL.Image` in RGB.


class ImageFiles:
    """Images listed as files on disk (one split of an ImageFolder tree)."""

    def __init__(self, paths: list[Path], labels: list[int]):
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int) -> Image.Image:
        try:
            with Image.open(self.paths[i]) as img:
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise UserError(f"cannot read image {self.paths[i]} ({err}); delete or replace that file.") from None

    def encoded(self, i: int) -> bytes:
        """The file's bytes, not decoded (views.CropToUint8 decodes only what a view needs)."""
        try:
            return self.paths[i].read_bytes()
        except OSError as err:
            raise UserError(f"cannot read image {self.paths[i]} ({err}); delete or replace that file.") from None


class HubImages:
    """One split of a Hugging Face `datasets` table with `image` and `label` columns; images decode lazily."""

    def __init__(self, table, name: str):
        self.table = table
        self.name = name
        self.raw = None
        self.labels = np.asarray(table["label"], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        try:
            return self.table[int(i)]["image"].convert("RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise UserError(
                f"cannot decode image {i} of {self.name} ({err}); re-download or repair that file."
            ) from None

    def encoded(self, i: int) -> bytes:
        """The stored bytes, not decoded (views.CropToUint8 decodes only what a view needs)."""
        if self.raw is None:  # the same table with the image column left undecoded (no copy)
            import datasets

            self.raw = self.table.cast_column("image", datasets.Image(decode=False))
        return self.raw[int(i)]["image"]["bytes"]


class Relabelled:
    """A source with other labels (injected label noise) and the same images: a synthetic image is drawn from its
    true class, so the noise must not reach the source that generates it."""

    def __init__(self, source, labels: np.ndarray):
        self.source, self.labels = source, labels
        if hasattr(source, "encoded"):  # JPEG bytes, which the fast data path decodes itself (views.CropView)
            self.encoded = source.encoded

    def __len__(self) -> int:
        return len(self.source)

    def image(self, i: int) -> Image.Image:
        return self.source.image(i)


class SubsetSource:
    """Some images of a source (a proxy run's share of a split), indexed 0 .. len - 1."""

    def __init__(self, source, indices: np.ndarray):
        self.source, self.indices = source, indices
        self.labels = source.labels[indices]
        if hasattr(source, "encoded"):  # JPEG bytes, which the fast data path decodes itself (views.CropView)
            self.encoded = lambda i: source.encoded(int(indices[i]))

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, i: int):
        return self.source.image(int(self.indices[i]))


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


def noisy_labels(labels: np.ndarray, num_classes: int, fraction: float, seed: int) -> np.ndarray:
    """Symmetric label noise (as in Zhang et al. 2017, "Understanding deep learning requires rethinking
    generalization"): exactly `round(fraction * N)` samples, chosen from `seed`, each get another class drawn
    uniformly from the K - 1 others. Only training labels come here; validation and test stay clean."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(labels), size=round(fraction * len(labels)), replace=False)
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, num_classes, size=len(flipped))) % num_classes
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


def find_image_folder_split(root: Path, split: str) -> Path | None:
    for name in SPLIT_FOLDERS[split]:
        if (root / name).is_dir():
            return root / name
    return None


def load_image_folder(root: Path) -> tuple[dict, list[str]]:
    """ImageFolder tree: `train/`, `validation/` or `val/`, `test/`, each with one folder per WordNet id."""
    sources, class_names = {}, None
    for split in ("train", "val", "test"):
        folder = find_image_folder_split(root, split)
        if folder is None:
            wanted = " or ".join(f"{root}/{name}/" for name in SPLIT_FOLDERS[split])
            raise UserError(f"the {split} split is missing: create {wanted} with one sub-folder per WordNet id.")
        names = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if len(names) < 2:
            raise UserError(
                f"{folder} needs at least two class folders; put each class's images in {folder}/<WordNet id>/."
            )
        if class_names is None:
            class_names = names
        elif names != class_names:
            raise UserError(f"{folder} has other class folders than {root}/train; every split needs the same classes.")
        paths, labels = [], []
        for label, name in enumerate(names):
            files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files and split == "train":  # else the model would silently learn one class fewer
                raise UserError(f"{folder / name} holds no images; add some, or remove that class from every split.")
            paths += files
            labels += [label] * len(files)
        if not paths:
            raise UserError(f"{folder} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); add some.")
        sources[split] = ImageFiles(paths, labels)
    return sources, class_names


def hub_class_names(table, where: str) -> list[str]:
    feature = table.features.get("label")
    names = getattr(feature, "names", None)
    if not names:
        raise UserError(
            f"the label column of {where} carries no class names; it must be a ClassLabel of WordNet ids, "
            "as in timm/mini-imagenet."
        )
    return list(names)


def load_parquet_folder(root: Path) -> tuple[dict, list[str]]:
    """Parquet files in the `timm/mini-imagenet` schema, named `<split>-*.parquet` anywhere below root."""
    import datasets

    files = {}
    for split, hub_name in HUB_SPLITS.items():
        found = sorted(root.rglob(f"{hub_name}-*.parquet")) or sorted(root.rglob(f"{hub_name}.parquet"))
        if split == "val" and not found:
            found = sorted(root.rglob("val-*.parquet")) or sorted(root.rglob("val.parquet"))
        if not found:
            raise UserError(f"no {hub_name}-*.parquet file under {root}; each split needs its parquet files.")
        files[split] = [str(p) for p in found]
    try:
        tables = datasets.load_dataset("parquet", data_files=files)
    except Exception as err:  # pyarrow and datasets raise many types for a malformed file
        raise UserError(f"cannot read the parquet files under {root} ({err}); re-download them.") from None
    return check_hub_tables(tables, str(root))


def check_hub_tables(tables, where: str) -> tuple[dict, list[str]]:
    sources, class_names = {}, None
    for split in ("train", "val", "test"):
        table = tables[split]
        if "image" not in table.column_names or "label" not in table.column_names:
            raise UserError(f"{where} needs 'image' and 'label' columns (the timm/mini-imagenet schema).")
        names = hub_class_names(table, where)
        if len(names) < 2:
            raise UserError(f"{where} names fewer than two classes; a classifier needs at least two.")
        class_names = class_names or names
        if names != class_names:
            raise UserError(f"the splits of {where} name different classes; every split needs the same label names.")
        sources[split] = HubImages(table, f"{where} {split}")
    return sources, class_names


def load_hub(name: str) -> tuple[dict, list[str]]:
    import datasets

    no_network = hub.offline()  # checked once: offline, load_dataset reads its cache instead of retrying
    try:
        raw = datasets.load_dataset(name)
        tables = {split: raw[hub_name] for split, hub_name in HUB_SPLITS.items()}
    except Exception as err:  # no network, unknown repo, missing split: all end the same way for the user
        why = (
            f"{name} is not in the local Hugging Face cache and the hub cannot be reached"
            if no_network
            else f"could not load {name} from the Hugging Face hub ({type(err).__name__})"
        )
        raise UserError(
            f"{why}; download it where there is network (hf download {name} --repo-type dataset --local-dir DIR) "
            f"and pass --data DIR, {hub.OFFLINE_DATA}."
        ) from None
    return check_hub_tables(tables, name)


def folder_fingerprint(sources: dict) -> str:
    """Cheap identity of local data: file names, sizes and modification times of the train split."""
    train = sources["train"]
    digest = hashlib.sha256()
    if isinstance(train, ImageFiles):
        for path in train.paths:
            stat = path.stat()
            digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    else:
        digest.update(repr(train.table.cache_files).encode())
    return digest.hexdigest()[:16]


def add_label_noise(sources: dict, num_classes: int, label_noise: float, noise_seed: int) -> np.ndarray | None:
    """Replace `label_noise` of the training labels (noisy_labels) in place of the train source; the flipped mask, or
    None without noise. Validation and test keep their labels."""
    if not label_noise:
        return None
    clean = sources["train"].labels
    sources["train"] = Relabelled(sources["train"], noisy_labels(clean, num_classes, label_noise, noise_seed))
    return sources["train"].labels != clean


def is_hub_name(data: str) -> bool:
    """A `user/name` that is not a local path: --data read from the Hugging Face hub."""
    return data.count("/") == 1 and not Path(data).expanduser().exists() and not data.startswith((".", "/", "~"))


def load_data(
    data: str,
    image_size: int | None = None,
    seed: int = 0,
    min_scale: float | None = None,
    *,
    label_noise: float = 0.0,
    noise_seed: int = 0,
) -> DataSplits:
    """Build the four views of `--data`: `synthetic[:options]`, a hub name like `timm/mini-imagenet`, or a folder.
    `label_noise`: the fraction of training labels replaced by another class, chosen from `noise_seed`."""
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
            )
            for split in ("train", "val", "test")
        }
        class_names = synthetic_class_names(options["classes"])
        hardness = sources["train"].hardness
        native_size, default_min_scale = options["size"], 0.5  # tiny images: keep most of the pattern in the crop
        identity = json.dumps({"synthetic": options, "generator": 2}, sort_keys=True)
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
    flipped = add_label_noise(sources, len(class_names), label_noise, noise_seed)
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
