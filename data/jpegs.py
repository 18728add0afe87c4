"""JPEG sets in timm/mini-imagenet's parquet schema: a split written as parquet files, images shrunk to a maximum
side (prepare_data.py), and ImageNet-size stand-ins for tests and benchmarks (real data cannot be downloaded there)."""

from __future__ import annotations

import io
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from data.sources import HUB_SPLITS

ROWS_PER_FILE = 5000  # mini-imagenet's own files hold a few thousand images each


def shrink(payload: tuple[bytes, int, int]) -> bytes:
    """JPEG bytes with the longest side at most max_side (reduced at a DCT scale first, then antialiased)."""
    raw, max_side, quality = payload
    with Image.open(io.BytesIO(raw)) as image:
        if max(image.size) <= max_side and image.format == "JPEG":
            return raw
        image.draft("RGB", (max_side, max_side))  # decode at the coarsest DCT scale still above the target
        image = image.convert("RGB")
        image.thumbnail((max_side, max_side), Image.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        return buffer.getvalue()


def source_bytes(source, i: int) -> bytes:
    """The stored bytes of image i of a hub/parquet split or an image folder."""
    return source.encoded(i)


def write_split(folder: Path, split: str, images: list[bytes], labels, class_names: list[str]) -> None:
    """One split as `<split>-NNNNN.parquet`, with the Hugging Face features (Image, ClassLabel of WordNet ids)."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=class_names)})
    for part, start in enumerate(range(0, len(images), ROWS_PER_FILE)):
        rows = {
            "image": [{"bytes": b, "path": None} for b in images[start : start + ROWS_PER_FILE]],
            "label": [int(x) for x in labels[start : start + ROWS_PER_FILE]],
        }
        table = datasets.Dataset.from_dict(rows, features=features)
        table.to_parquet(str(folder / f"{HUB_SPLITS[split]}-{part:05d}.parquet"))


def imagenet_like_jpeg(rng: np.random.Generator, width: int = 500, height: int = 375) -> bytes:
    """A JPEG of ImageNet's typical size and compressed size (about 120 KB at 500x375): smooth colour regions, a
    mid-frequency texture and pixel noise (std 22) at quality 92, tuned so the decoder does the work of a photo's."""
    low = Image.fromarray(rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    mid = Image.fromarray(rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)).resize((width, height))
    pixels = 0.6 * np.asarray(low, np.float32) + 0.4 * np.asarray(mid, np.float32)
    pixels += rng.normal(0.0, 22.0, size=pixels.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


IMAGENET_SIZES = ((500, 375), (375, 500), (500, 333), (500, 400))  # the commonest ImageNet shapes


def write_imagenet_like_set(folder: Path, class_names: list[str], counts: dict[str, int], seed: int = 0) -> Path:
    """A parquet set in timm/mini-imagenet's schema: `counts` images per split, ImageNet-size JPEGs, labels cycling
    over `class_names` (WordNet ids)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in counts.items():
        sizes = [IMAGENET_SIZES[i % len(IMAGENET_SIZES)] for i in range(count)]
        images = [imagenet_like_jpeg(rng, *size) for size in sizes]
        write_split(folder, split, images, [i % len(class_names) for i in range(count)], class_names)
    return folder


def write_reduced_copy(data, out: Path, max_side: int, quality: int, workers: int) -> None:
    """Every split of `data` (DataSplits) into the new folder `out`, each image shrunk to `max_side` by `workers`
    processes (prepare_data.py)."""
    out.mkdir(parents=True)
    with ProcessPoolExecutor(max(1, workers)) as pool:
        for split, view in (("train", data.train), ("val", data.val), ("test", data.test)):
            payloads = ((source_bytes(view.source, i), max_side, quality) for i in range(len(view)))
            images = list(pool.map(shrink, payloads, chunksize=64))
            write_split(out, split, images, view.labels, data.class_names)
            print(f"{split}: {len(images)} images, {sum(map(len, images)) / 2**20:.1f} MiB", flush=True)
