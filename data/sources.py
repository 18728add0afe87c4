"""Raw image sources: `len`, `labels` (np.int64 array) and `image(i) -> PIL.Image` in RGB, read from an ImageFolder
tree, parquet files in the timm/mini-imagenet schema, or the Hugging Face hub; and what wraps one (other labels, a
share of the images). Class names are ImageNet WordNet ids (e.g. `n01532829`)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from common import hub
from common.errors import UserError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


SPLIT_FOLDERS = {"train": ("train",), "val": ("validation", "val"), "test": ("test",)}


HUB_SPLITS = {"train": "train", "val": "validation", "test": "test"}


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


def is_hub_name(data: str) -> bool:
    """A `user/name` that is not a local path: --data read from the Hugging Face hub."""
    return data.count("/") == 1 and not Path(data).expanduser().exists() and not data.startswith((".", "/", "~"))
