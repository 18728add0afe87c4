"""The fast data path: uint8 views, decoded where they must be, finished batched on the device.

- Fixed views (scoring, validation, test: the eval transform, which never changes) are decoded once into a
  memory-mapped uint8 store `[N, S, S, 3]` under the cache dir; a batch is then a memory copy, no JPEG work.
- Training views: a worker decodes, crops and resizes to uint8 (`CropToUint8`); the flip, colour jitter and
  normalisation run batched on the device (`to_device`). Every random choice is drawn, as the reference transform
  draws it, from the (seed, epoch, index) generator of `data.SampleView`, so a view is exactly reproducible.
- Normalisation on the device is the reference's own arithmetic (`ToTensor` then `Normalize`), so a fixed view from
  the store is bit-identical to the PIL path's.

Images travel as NHWC uint8 (4x less host-to-device traffic than float32), which on the device is NCHW channels-last.
docs/data-path.md has the measurements and how to pick a path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2.functional import InterpolationMode, resize
from tqdm import tqdm

from common.errors import UserError
from common.files import atomic_write, cache_key
from data.sources import HubImages, ImageFiles
from data.splits import DataSplits, SampleView
from data.transforms import IMAGENET_MEAN, IMAGENET_STD, pixel_part

try:
    import fcntl
except ImportError:  # Windows: no lock; concurrent builders each rename a complete, identical store
    fcntl = None

LOADERS = ("auto", "pil", "uint8")
STORE_VERSION = 1  # bump when the stored pixels change meaning
JPEG_SUFFIXES = {".jpg", ".jpeg"}
FLIP, JITTER, ORDER = 0, slice(1, 4), slice(4, 7)  # the columns of a training view's parameters
GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


# ----------------------------------------------------------------------------------------------------------------------
# Training views: the CPU part


class CropToUint8:
    """The CPU half of `data.train_transform`: RandomResizedCrop to uint8 `[S, S, 3]`, plus the flip and colour-jitter
    parameters drawn from the same generator right after the crop box, in the reference's order (crop box, flip,
    jitter order and factors), so the boxes come from the very sampler the reference uses.

    `draft`: decode a JPEG at a DCT scale (1/2, 1/4, 1/8) when the crop box is at least that many times the output
    on its short side, so the decoder does less work and the resize averages fewer pixels (a slightly different,
    equally antialiased, view; off reproduces the reference's pixels up to the jitter's rounding).
    """

    def __init__(self, reference: transforms.Compose, draft: bool = True):
        crop, flip, jitter = reference.transforms[:3]
        if not (
            isinstance(crop, transforms.RandomResizedCrop)
            and isinstance(flip, transforms.RandomHorizontalFlip)
            and isinstance(jitter, transforms.ColorJitter)
            and jitter.hue is None
            and crop.interpolation == transforms.InterpolationMode.BILINEAR
        ):
            raise ValueError(f"CropToUint8 reproduces data.train_transform only, not {reference}")
        self.crop, self.flip_p, self.jitter, self.draft = crop, flip.p, jitter, draft
        self.size = crop.size[0]

    def __repr__(self) -> str:  # part of the teacher-view store's key: another view, another store
        return (
            f"CropToUint8(size={self.size}, scale={self.crop.scale}, ratio={self.crop.ratio}, draft={self.draft}, "
            f"flip={self.flip_p}, jitter={self.jitter.brightness},{self.jitter.contrast},{self.jitter.saturation}, "
            f"device-side v{STORE_VERSION})"
        )

    def draw(self, image: Image.Image) -> tuple[tuple[int, int, int, int], torch.Tensor]:
        """(crop box (top, left, height, width), parameters [flip, brightness, contrast, saturation, order x3]).
        Reads the image's size only: an opened JPEG is not decoded yet."""
        box = self.crop.get_params(image, list(self.crop.scale), list(self.crop.ratio))
        flip = float(torch.rand(1) < self.flip_p)
        order, brightness, contrast, saturation, _ = self.jitter.get_params(
            self.jitter.brightness, self.jitter.contrast, self.jitter.saturation, None
        )
        order = [k for k in order.tolist() if k != 3]  # hue (3) is off
        return box, torch.tensor([flip, brightness, contrast, saturation, *order], dtype=torch.float32)

    def __call__(self, image: Image.Image, encoded: bytes | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`image`: opened, maybe not decoded yet; `encoded`: its JPEG bytes, if it is one (libjpeg-turbo through
        torchvision decodes them about 20% faster than PIL, straight into a tensor)."""
        box, params = self.draw(image)
        top, left, height, width = box
        scale = draft_scale(image, height, width, self.size) if self.draft else 1
        if encoded is not None and scale == 1 and image.format == "JPEG" and image.mode == "RGB":
            pixels = decode_jpeg(torch.frombuffer(bytearray(encoded), dtype=torch.uint8), mode=ImageReadMode.RGB)
        else:
            if scale > 1:
                image, box = draft(image, box, scale)
            pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
        return resize_crop(pixels, box, self.size), params


def resize_crop(pixels: torch.Tensor, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """The box of a `[3, H, W]` uint8 image, resized (bilinear, antialiased: PIL's filter, within one level) to
    `[S, S, 3]` uint8. Cropping first, as torchvision's resized_crop does: the box's edge pixels are not averaged
    with those outside it. torch's uint8 resize runs fastest on channels-last data, which is also what is returned."""
    top, left, height, width = box
    crop = pixels[None, :, top : top + height, left : left + width].contiguous(memory_format=torch.channels_last)
    resized = resize(crop, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return resized[0].permute(1, 2, 0)


def draft(image: Image.Image, box: tuple[int, int, int, int], scale: int) -> tuple[Image.Image, tuple]:
    """Decode the JPEG at 1/scale (a DCT scale) and the box scaled to match."""
    full_width = image.size[0]
    image.draft("RGB", (-(-image.size[0] // scale), -(-image.size[1] // scale)))
    factor = full_width / image.size[0]  # the scale the decoder took
    top, left, height, width = box
    top, left = round(top / factor), round(left / factor)
    height = min(round(height / factor), image.size[1] - top)
    width = min(round(width / factor), image.size[0] - left)
    return image, (top, left, height, width)


def draft_scale(image: Image.Image, height: int, width: int, size: int) -> int:
    """The largest DCT scale (8, 4, 2) that keeps the crop box at least `size` on its short side, else 1."""
    if getattr(image, "format", None) != "JPEG" or not getattr(image, "tile", None):
        return 1  # not a JPEG, or already decoded
    for scale in (8, 4, 2):
        if min(height, width) >= scale * size:
            return scale
    return 1


class CropView(SampleView):
    """A training view whose images a worker opens lazily (so `CropToUint8` can ask the JPEG decoder for less) and
    returns as `((uint8 image, parameters), label, index)`; `to_device` finishes the batch."""

    def load(self, index: int):
        if not hasattr(self.source, "encoded"):  # generated images (synthetic data, a proxy run's share)
            return self.transform(self.source.image(index))
        encoded, state = self.source.encoded(index), torch.get_rng_state()
        try:
            with Image.open(io.BytesIO(encoded)) as image:
                if image.getexif().get(ExifTags.Base.Orientation):
                    return self.transform(ImageOps.exif_transpose(image))  # as the hub's decoder does
                return self.transform(image, encoded)
        except (UnidentifiedImageError, OSError, RuntimeError):  # RuntimeError: torchvision's decoder
            torch.set_rng_state(state)  # the same draws again, from the source's own decoder, which names the file
            return self.transform(self.source.image(index))


# ----------------------------------------------------------------------------------------------------------------------
# The device part: one call turns any batch into the normalised float batch the model takes


def to_device(
    images, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format
) -> torch.Tensor:
    """A loader's image batch on the device, normalised, in `memory_format`: float batches (the PIL path) are moved;
    uint8 batches (fixed views) are normalised there; `(uint8, parameters)` batches (training views) get their flip
    and jitter first. NHWC uint8 is already channels-last on the device. The host only queues work: the batch
    comes from pinned memory without a wait, and the constants are the device's own."""
    if isinstance(images, (list, tuple)):
        pixels, params = images
        batch = scale_to_unit(pixels.to(device, non_blocking=True))
        batch = normalise(augment(batch, params.to(device, non_blocking=True)))
    elif images.dtype == torch.uint8:
        batch = normalise(scale_to_unit(images.to(device, non_blocking=True)))
    else:
        batch = images.to(device, non_blocking=True)
    return batch.contiguous(memory_format=memory_format)


def scale_to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """NHWC uint8 -> NCHW float in [0, 1], ToTensor's arithmetic."""
    return pixels.permute(0, 3, 1, 2).float().div(255)


_NORMALISATION: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def normalisation(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet's mean and std as `[3, 1, 1]` tensors on `device`, made once per device: a tensor built from Python
    numbers is a blocking host-to-device copy, which in the step loop would make the host wait for the GPU."""
    if device.type == "cuda" and device.index is None:  # a batch's device always names its index
        device = torch.device("cuda", torch.cuda.current_device())
    if device not in _NORMALISATION:
        mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
        _NORMALISATION[device] = mean.to(device), std.to(device)
    return _NORMALISATION[device]


def normalise(batch: torch.Tensor) -> torch.Tensor:
    """Normalize's arithmetic, per channel: (x - mean) / std."""
    mean, std = normalisation(batch.device)
    return batch.sub(mean).div(std)


def grey(batch: torch.Tensor) -> torch.Tensor:
    """torchvision's rgb_to_grayscale, [N, 1, H, W]."""
    r, g, b = batch.unbind(dim=1)
    return (GREY_WEIGHTS[0] * r + GREY_WEIGHTS[1] * g + GREY_WEIGHTS[2] * b).unsqueeze(1)


def augment(batch: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Each sample's flip, then its brightness, contrast and saturation in its own drawn order, as torchvision's
    tensor functions compute them. All three are blends, `clamp(f * x + (1 - f) * other)`, with `other` 0
    (brightness), the mean grey level (contrast) or the grey image (saturation), so each of the three places is one
    blend over the batch whose `other` each sample picks by its adjustment there."""
    flip = params[:, FLIP].bool()[:, None, None, None]
    batch = torch.where(flip, batch.flip(-1), batch)
    factors, order = params[:, JITTER], params[:, ORDER].long()
    for place in range(3):
        kind = order[:, place]
        factor = factors.gather(1, kind[:, None])[:, :, None, None]
        grey_image = grey(batch)
        mean = grey_image.mean(dim=(1, 2, 3), keepdim=True)
        is_contrast = (kind == 1).float()[:, None, None, None]
        is_saturation = (kind == 2).float()[:, None, None, None]
        other = is_contrast * mean + is_saturation * grey_image  # exactly 0, the mean or the grey image
        batch = batch.mul(factor).add_(other.mul(1.0 - factor)).clamp_(0.0, 1.0)
    return batch


# ----------------------------------------------------------------------------------------------------------------------
# Fixed views: decoded once into a uint8 store


class StoredView(SampleView):
    """A fixed view read from its uint8 store: `(image [S, S, 3] uint8, label, index)`, no decoding. Keeps the
    source and the PIL transform, so code that wraps the source (a proxy run's share) still works."""

    def __init__(self, view: SampleView, path: Path):
        super().__init__(view.source, view.transform, view.seed)
        self.path, self.array = path, None

    def load(self, index: int) -> torch.Tensor:
        if self.array is None:  # opened in each worker: a memory map does not pickle as one
            self.array = np.load(self.path, mmap_mode="r")
        return torch.from_numpy(np.array(self.array[index]))

    def __getstate__(self):
        return {**self.__dict__, "array": None}


def fixed_view_store(view: SampleView, cache_dir, parts: dict, workers: int) -> StoredView:
    """The view's uint8 store under `cache_dir`, built if it is missing or fails validation. Keyed by `parts`
    (data identity, split, transform), like the teacher-logit cache.

    Processes that need one store take turns under a file lock: the first builds it, the others wait for the lock and
    find it built. Experiment builds its stores before the processes of a torchrun start their process group, so no
    rank waits for a build in a collective, whose timeout (NCCL's 10 minutes) a 50,000-image store can outlast."""
    size = view.transform.transforms[1].size[0]  # data.eval_transform: Resize, CenterCrop(size), ...
    shape = (len(view), size, size, 3)
    path = Path(cache_dir).expanduser() / f"fixed-views-{cache_key({**parts, 'version': STORE_VERSION})}.npy"
    if valid_store(path, shape):
        return StoredView(view, path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_suffix(".lock"), "a")  # closed by the with below
    except OSError as err:
        raise store_error(path, shape, err) from None
    with lock:
        if fcntl is not None:  # waited for without a timeout; the kernel releases it when its holder exits
            # a file system without locks (Lustre without -o flock, some NFS) builds unlocked: concurrent builds are
            # safe (build_store renames a finished file into place), only repeated
            with contextlib.suppress(OSError):
                fcntl.flock(lock, fcntl.LOCK_EX)
        if not valid_store(path, shape):  # another process may have built it while this one waited
            build_store(view, path, shape, workers)
    return StoredView(view, path)


def store_error(path: Path, shape: tuple, err: OSError) -> UserError:
    return UserError(
        f"cannot write the fixed-view store {path} ({err.strerror or err}); pass a --cache-dir with "
        f"{np.prod(shape) / 1e9:.2f} GB free, or --loader pil."
    )


def marker(path: Path) -> Path:
    return path.with_suffix(".done.json")


def spot_checksum(array: np.ndarray) -> int:
    """crc32 of the first, middle and last rows: catches a store swapped or overwritten under its marker, cheaply."""
    rows = sorted({0, len(array) // 2, len(array) - 1})
    return zlib.crc32(np.ascontiguousarray(array[rows]).tobytes())


def valid_store(path: Path, shape: tuple) -> bool:
    """The store is complete (its marker written after it), of the expected shape, and matches the marker."""
    try:
        done = json.loads(marker(path).read_text())
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return False
    return array.shape == shape and array.dtype == np.uint8 and done.get("checksum") == spot_checksum(array)


def build_store(view: SampleView, path: Path, shape: tuple, workers: int) -> None:
    """Decode every image of the view through its PIL steps into a temporary file (in parallel: the DataLoader's
    workers decode, this process writes), flush it, then rename it into place and write the marker. A kill leaves
    the old store (or none) and a temporary file; two builders each rename a complete, identical store. The file's
    space is reserved first, so a full disk fails at once, with the fix."""
    pixels = PixelView(view.source, pixel_part(view.transform))
    loader = DataLoader(pixels, batch_size=64, num_workers=workers)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        if hasattr(os, "posix_fallocate"):
            with open(tmp, "r+b") as file:
                os.posix_fallocate(file.fileno(), 0, os.path.getsize(tmp))
        start = 0
        for batch in tqdm(loader, desc=f"decoding fixed views once ({path.name})", leave=False, disable=None):
            array[start : start + len(batch)] = batch.numpy()
            start += len(batch)
        array.flush()
        checksum = spot_checksum(array)
        del array
        os.replace(tmp, path)
    except OSError as err:
        raise store_error(path, shape, err) from None
    finally:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
    done = json.dumps({"shape": shape, "checksum": checksum}).encode()
    atomic_write(marker(path), lambda file: file.write(done))


class PixelView(Dataset):
    """A source through the PIL steps of a transform, as uint8 `[S, S, 3]` (what the store holds)."""

    def __init__(self, source, steps):
        self.source, self.steps = source, steps

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.steps(self.source.image(index)).convert("RGB")))


# ----------------------------------------------------------------------------------------------------------------------
# Choosing the path


def image_bytes(data: DataSplits) -> int:
    """Bytes of one image in a loader's batch: uint8 on the fast path, float32 on the PIL path."""
    return data.image_size**2 * 3 * (1 if isinstance(data.train, CropView) else 4)


def uses_uint8(data: DataSplits, loader: str) -> bool:
    """`auto`: the fast path for real photographs (a hub or parquet set, a folder of JPEGs), today's PIL path for
    generated images and other files (the synthetic set's figures stay exactly as they were)."""
    if loader != "auto":
        return loader == "uint8"
    if isinstance(data.train.transform, CropToUint8):  # already on it (a proxy run's share of such data)
        return True
    source = data.train.source
    while not isinstance(source, HubImages | ImageFiles) and hasattr(source, "source"):  # relabelled, a subset
        source = source.source
    if isinstance(source, HubImages):
        return True
    return isinstance(source, ImageFiles) and all(p.suffix.lower() in JPEG_SUFFIXES for p in source.paths)


def fast_splits(data: DataSplits, loader: str, cache_dir, workers: int, draft: bool = True) -> DataSplits:
    """The splits on the path `loader` picks: unchanged (pil), or a CropView for training and stores for the fixed
    views (uint8)."""
    if not uses_uint8(data, loader):
        return data
    train = data.train
    if not isinstance(train, CropView):
        crop = train.transform if isinstance(train.transform, CropToUint8) else CropToUint8(train.transform, draft)
        train = CropView(train.source, crop, train.seed)

    def store(view: SampleView, split: str) -> SampleView:
        if isinstance(view, StoredView):
            return view
        parts = {"data": data.identity, "split": split, "transform": repr(view.transform)}
        return fixed_view_store(view, cache_dir, parts, workers)

    return dataclasses.replace(
        data, train=train, score=store(data.score, "train"), val=store(data.val, "val"), test=store(data.test, "test")
    )
