"""The teacher and its logits: loading it (a sliced ImageNet model or a checkpoint of ours), the cache of its logits
on the un-augmented training images (for difficulty scores), the store of its logits on the augmented views, and the
one `LogitSource` of a run that the epoch loop asks for a batch's teacher logits (docs/formulas.md: the KD loss and
the difficulty score that read them).

Which source a run uses is decided once, by `choose_source` from --teacher-logits:
online (the teacher runs on each augmented batch), cached (its logits of the un-augmented image), replay (online, but
each view's logits are stored by the first run that trains on it and read by later runs).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import models
from bookkeeping import is_main_process
from curriculum_dataloader import SCORED, TEACHER_GATES, scores_from_train_pass
from devices import autocast, broadcast_from_main, share_from_main, sum_across_processes
from errors import UserError
from files import atomic_write, load_checkpoint, write_error

# ----------------------------------------------------------------------------------------------------------------------
# Does a run need the teacher, and which one


def needs_teacher(config) -> bool:
    """A run loads the teacher for KD (label weight < 1), for difficulty scores, or for --teacher-logits cached."""
    return config.label_weight < 1 or config.curriculum in SCORED or config.teacher_logits == "cached"


def fills_cache(config) -> bool:
    """Whether a run may write its teacher's logits into --cache-dir (the scoring cache or the view store)."""
    teacher_gate = getattr(config, "label_gate", "all") in TEACHER_GATES  # reads the scoring cache
    return config.curriculum in SCORED or config.teacher_logits != "online" or teacher_gate


def batches_need_logits(config) -> bool:
    """The training steps read the teacher's logits: KD (label weight < 1), or difficulty scores from the steps."""
    return config.label_weight < 1 or scores_from_train_pass(config.curriculum, config.score_source)


def load_teacher(data, name: str, checkpoint: str | None = None, weights: str | None = None) -> torch.nn.Module:
    """The teacher, in eval mode (the one place that sets it): the checkpoint of ours at `checkpoint`, else the timm
    ImageNet model `name` (weights from timm, or the local file `weights`), sliced to the data's classes. A checkpoint
    trained on more classes than the data's (a superset) is sliced by WordNet id like ImageNet's. Its last layer runs
    in fp32 under --amp (models.Fp32Head): its logits are KD's targets and the difficulty scores' input."""
    if checkpoint:
        saved = load_checkpoint(checkpoint)
        try:
            teacher = models.model_from_checkpoint(saved)
        except RuntimeError as err:  # load_state_dict: the weights are of another architecture than the name
            raise UserError(
                f"the teacher checkpoint {checkpoint} names the model {saved['model']} but holds "
                f"weights of another one ({str(err).splitlines()[0]}); pass a best.pt written by train_student.py."
            ) from None
        if saved["class_names"] != data.class_names:
            where = f"the teacher checkpoint {checkpoint}"
            teacher = models.SlicedTeacher(teacher, models.class_indices(data.class_names, saved["class_names"], where))
    else:
        teacher = models.imagenet_teacher(name, data.class_names, weights)
    return models.with_fp32_head(teacher).eval().requires_grad_(False)


def teacher_identity(config) -> dict:
    """What determines the teacher's outputs, for the logit cache key."""
    if config.teacher_checkpoint:
        stat = Path(config.teacher_checkpoint).stat()
        return {
            "checkpoint": str(Path(config.teacher_checkpoint).resolve()),
            "size": stat.st_size,
            "mtime": stat.st_mtime_ns,
        }
    weights = config.teacher_weights
    if weights:
        stat = Path(weights).stat()
        return {"model": config.teacher, "weights": str(Path(weights).resolve()), "size": stat.st_size}
    return {"model": config.teacher, "weights": "timm-pretrained"}


# ----------------------------------------------------------------------------------------------------------------------
# Teacher-logit cache


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def cached_logits(
    cache_dir: Path, parts: dict, compute, shape: tuple[int, int], write: bool = True
) -> tuple[torch.Tensor, bool]:
    """Logits stored as fp16 under a hash of `parts`; `compute()` runs only on a miss. Returns (logits, was_cached).

    A cached file is used only if it holds a finite fp16 tensor of `shape` ([samples, classes]); anything else
    (truncated, garbage, another shape, NaN) is recomputed and replaced by an atomic rename, never deleted first, so
    several processes meeting one bad file do not race. Fresh logits are rounded through fp16 too, so a run that
    computed them and a run that loaded them agree exactly. With several processes rank 0 alone reads the file and
    sends what it found to the others: every rank takes the same branch (`compute` runs collectives), even while
    another run writes the file, and works on the same logits.
    """
    cache_dir = Path(cache_dir).expanduser()
    path = cache_dir / f"teacher-logits-{cache_key(parts)}.pt"
    cached = read_cached_logits(path, shape) if is_main_process() else None
    if broadcast_from_main(cached is not None):
        return share_from_main(cached, shape, torch.float16).float(), True
    logits = compute().half()
    if write:  # with several processes, rank 0 writes
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda handle: torch.save(logits, handle))
        atomic_write(path.with_suffix(".json"), lambda handle: handle.write(json.dumps(parts, indent=2).encode()))
    return logits.float(), False


def read_cached_logits(path: Path, shape: tuple[int, int]) -> torch.Tensor | None:
    """The cached tensor if it is what a cache file must hold, else None (then the caller recomputes it)."""
    if not path.exists():
        return None
    try:
        logits = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated, not a torch file, or unpickling refused: whatever it is, it is recomputed
        return None
    valid = (
        isinstance(logits, torch.Tensor)
        and logits.dtype == torch.float16
        and tuple(logits.shape) == tuple(shape)
        and bool(torch.isfinite(logits).all())
    )
    return logits if valid else None


# ----------------------------------------------------------------------------------------------------------------------
# Teacher logits of the augmented views, stored once and replayed by later runs


class TeacherViewStore:
    """The teacher's logits on the augmented training views, one fp16 file per epoch, shared by every run of the same
    teacher, data, training transform, augmentation seed and precision (`parts`).

    `data.SampleView` seeds a sample's augmentation from (augmentation seed, epoch, index), so the view, and the
    teacher's logits on it, are the same in every such run: the first run that trains on a view stores its logits and
    later runs replay them: online KD on the student's own view (Beyer et al. 2022) without running the teacher
    again (as FKD, Shen & Xing 2022, does for its crops). A run rounds the teacher's logits through fp16 whether it
    computed or read them, so a replaying run and the run that filled the store train alike.

    `<cache dir>/teacher-views-<key>/epoch-0001.npy` holds an epoch: [samples, classes + 1] fp16, the logits and a
    last column that is 1 where the row is stored, so 2 (K + 1) bytes per view. A file is created whole and put in
    place by a link that never replaces, and a row's logits are written before its flag: several runs can fill one
    store at once, and a run killed mid-write leaves rows that are either stored or recomputed. A damaged file
    (foreign header, wrong size) is replaced by a fresh one and a stored row that is not finite is recomputed: at
    worst the teacher runs again.
    """

    def __init__(self, cache_dir: Path, parts: dict, shape: tuple[int, int], write: bool = True):
        self.folder = Path(cache_dir).expanduser() / f"teacher-views-{cache_key(parts)}"
        self.samples, self.classes = shape
        self.write = write
        if write:
            self.folder.mkdir(parents=True, exist_ok=True)
            key = self.folder / "key.json"
            if not key.exists():
                atomic_write(key, lambda handle: handle.write(json.dumps(parts, indent=2).encode()))

    def path(self, epoch: int) -> Path:
        return self.folder / f"epoch-{epoch:04d}.npy"

    def read(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(logits, stored): the epoch's logit rows and which of them are stored and finite."""
        array = self.open(self.path(epoch), mode="r")
        if array is None:
            return np.zeros((self.samples, self.classes), np.float16), np.zeros(self.samples, bool)
        array = np.array(array)
        logits = array[:, : self.classes]
        return logits, (array[:, -1] == 1) & np.isfinite(logits).all(axis=1)

    def store(self, epoch: int, rows: np.ndarray, logits: np.ndarray) -> None:
        """Write the logits of `rows`, then flag them as stored."""
        path = self.path(epoch)
        array = self.open(path, mode="r+")
        if array is None:
            array = self.create(path)
        array[rows, : self.classes] = logits
        array.flush()
        array[rows, -1] = 1
        array.flush()

    def open(self, path: Path, mode: str) -> np.memmap | None:
        """The epoch file as a memory map, or None if it is missing or not one of this store's."""
        try:
            array = np.load(path, mmap_mode=mode)
        except (OSError, ValueError, EOFError):  # missing, truncated or foreign: store() creates or replaces it
            return None
        return array if array.shape == (self.samples, self.classes + 1) and array.dtype == np.float16 else None

    def create(self, path: Path) -> np.memmap:
        """A zeroed epoch file with its disk space reserved (a full disk fails here, not midway through a write):
        linked in place if none is there yet (a file another run just created wins), else replacing a damaged one."""
        handle, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
        try:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(self.samples, self.classes + 1))
            if hasattr(os, "posix_fallocate"):
                with open(tmp, "r+b") as file:
                    os.posix_fallocate(file.fileno(), 0, os.path.getsize(tmp))
            try:
                os.link(tmp, path)
            except FileExistsError:
                existing = self.open(path, mode="r+")
                if existing is not None:
                    return existing
                os.replace(tmp, path)
                print(f"teacher view store: replaced the damaged {path}; its views are computed again", file=sys.stderr)
        except OSError as err:  # a full disk: one line naming the store and what an epoch file needs
            raise write_error(path, err, needed=self.samples * (self.classes + 1) * 2) from None
        finally:
            Path(tmp).unlink(missing_ok=True)
        return array


class EpochViews:
    """One epoch's teacher logits from a `TeacherViewStore`, on the device, for `ReplayedLogits`: `lookup`
    serves a batch whose views are all stored, `record` keeps the logits of a batch the teacher had to run on, and
    `save` writes them to the store after the epoch (one transfer, no wait inside the loop)."""

    def __init__(self, store: TeacherViewStore, epoch: int, device: torch.device):
        self.store, self.epoch, self.device = store, epoch, device
        logits, self.stored = store.read(epoch)
        self.table = torch.from_numpy(logits).to(device)
        self.stored_on_device = torch.from_numpy(self.stored).to(device)
        self.new = torch.zeros_like(self.table, dtype=torch.float32)  # fp32: summed across processes (disjoint rows)
        self.new_rows = torch.zeros(store.samples, device=device)

    def lookup(self, cpu_indices: torch.Tensor, indices: torch.Tensor) -> torch.Tensor | None:
        """The stored logits of the batch, if every one of its views is stored (decided on the CPU: no device sync)."""
        if not self.stored[cpu_indices.numpy()].all():
            return None
        return self.table[indices].float()

    def record(self, indices: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The teacher's fresh logits of a batch, rounded through fp16 as stored, with the rows already stored taken
        from the store, so this run trains on exactly what a run replaying the store will."""
        rounded = logits.half()
        rounded = torch.where(self.stored_on_device[indices, None], self.table[indices], rounded)
        self.new[indices] = rounded.float()
        self.new_rows.index_fill_(0, indices, 1.0)  # no Python number copied into device memory: no wait
        return rounded.float()

    def save(self, reduce=lambda tensor: tensor) -> int:
        """Store the views this epoch computed (`reduce`: the sum across processes). Returns how many were new. A
        view drawn more than once (prioritised) may lie in several processes' shards: the sum is divided by their
        count (the same view, so the same logits)."""
        counts = reduce(self.new_rows).cpu().numpy()
        new = reduce(self.new).cpu().numpy()  # every process takes part in both sums, whether it writes or not
        rows = np.flatnonzero((counts > 0) & ~self.stored)
        if len(rows) and self.store.write:
            self.store.store(self.epoch, rows, (new[rows] / counts[rows, None]).astype(np.float16))
        return len(rows)


# ----------------------------------------------------------------------------------------------------------------------
# A run's source of teacher logits: chosen once, asked once per batch


class LogitSource:
    """Where a run's training steps get the teacher's logits of a batch. This base serves runs whose steps never read
    them (labels only): `batch` gives None. Every source also holds the teacher's logits of the un-augmented training
    images (`scoring_logits`: computed once and cached on disk under `parts`), which the difficulty scores read.

    `predict(model)` gives a model's logits on the un-augmented training images (engine.predict_logits)."""

    def __init__(self, config, teacher, data, device: torch.device, dtype: torch.dtype | None, predict):
        self.teacher, self.data, self.device, self.dtype, self.predict = teacher, data, device, dtype, predict
        self.cache_dir = config.cache_dir
        self.parts = None if teacher is None else {
            "teacher": teacher_identity(config),
            "data": data.identity,
            "split": "train",
            "transform": f"eval/{data.image_size}",
            "dtype": str(dtype) if dtype is None else f"{dtype}, fp32 head",  # bf16 heads before: other logits
        }  # fmt: skip
        self.shape = (len(data.score), len(data.class_names))
        self.scoring: torch.Tensor | None = None

    def scoring_logits(self) -> torch.Tensor:
        """The teacher's logits of the un-augmented training images, computed once and cached on disk."""
        if self.scoring is None:
            compute = lambda: self.predict(self.teacher)  # noqa: E731
            self.scoring, _ = cached_logits(self.cache_dir, self.parts, compute, self.shape, write=is_main_process())
        return self.scoring

    def start_epoch(self, epoch: int) -> None:
        """Before an epoch's first batch."""

    def batch(self, images: torch.Tensor, cpu_indices: torch.Tensor, indices: torch.Tensor) -> torch.Tensor | None:
        """The teacher's logits of a batch of augmented `images`, samples `indices` (on the CPU and on the device)."""
        return None

    def end_epoch(self) -> None:
        """After an epoch's last batch."""


class OnlineLogits(LogitSource):
    """The teacher runs on each augmented batch."""

    def batch(self, images, cpu_indices, indices):
        with torch.inference_mode(), autocast(self.device, self.dtype):
            logits = self.teacher(images)
        return logits.clone()  # an inference tensor cannot enter the autograd graph


class CachedLogits(LogitSource):
    """The teacher's cached logits of the un-augmented image, kept on the device (fp16: 10 MB for mini-imagenet)."""

    table: torch.Tensor | None = None

    def start_epoch(self, epoch):
        if self.table is None:
            self.table = self.scoring_logits().to(self.device, torch.float16)

    def batch(self, images, cpu_indices, indices):
        return self.table[indices].float()


class ReplayedLogits(OnlineLogits):
    """The stored logits of these very views (TeacherViewStore); the teacher runs only on a batch with a view not
    stored yet, whose logits are then stored after the epoch."""

    store: TeacherViewStore | None = None
    views: EpochViews | None = None

    def start_epoch(self, epoch):
        if self.store is None:
            parts = {**self.parts, "transform": repr(self.data.train.transform), "augment_seed": self.data.train.seed}
            shape = (len(self.data.train), len(self.data.class_names))
            self.store = TeacherViewStore(self.cache_dir, parts, shape, write=is_main_process())
        self.views = EpochViews(self.store, epoch, self.device)

    def batch(self, images, cpu_indices, indices):
        logits = self.views.lookup(cpu_indices, indices)
        return logits if logits is not None else self.views.record(indices, super().batch(images, cpu_indices, indices))

    def end_epoch(self):
        self.views.save(reduce=sum_across_processes)


SOURCES = {"online": OnlineLogits, "cached": CachedLogits, "replay": ReplayedLogits}


def choose_source(config, teacher, data, device: torch.device, dtype: torch.dtype | None, predict) -> LogitSource:
    """The run's source, from --teacher-logits: the base source (no logits) when its steps never read them, except
    with cached, whose table costs nothing per batch."""
    if teacher is None or (config.teacher_logits != "cached" and not batches_need_logits(config)):
        return LogitSource(config, teacher, data, device, dtype, predict)
    return SOURCES[config.teacher_logits](config, teacher, data, device, dtype, predict)
