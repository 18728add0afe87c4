"""The teacher's logits kept on disk, so the teacher never runs twice over the same images: the cache of its logits on
the un-augmented training images (difficulty scores), and the store of its logits on each augmented view (replayed by
later runs of the same views). Both are keyed by a hash of what determines the logits (common.files.cache_key)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from common.files import atomic_write, cache_key, write_error
from common.run_folder import is_main_process
from training.devices import broadcast_from_main, share_from_main


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
