"""Files that survive a kill and a full disk: atomic writes, the one-line error for a file that cannot be written,
checks that an output path is writable before any work, checkpoints and JSON.

A leaf module: it imports nothing of the project but errors, and torch only inside the two checkpoint functions, so
the report can read runs without loading the training stack.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from common.errors import UserError


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; done once, at import, before any thread starts
    os.umask(mask)
    return mask


# mkstemp creates files 0600; a run's files get the mode open() would give them (0666 less the umask)
FILE_MODE = 0o666 & ~_read_umask()


def append_to_zip(path: Path, members: dict) -> None:
    """Add members to the zip at `path` (an .npz; created if absent) without rewriting what it holds: `members` maps a
    new member's name to a function that writes its bytes. fsync'd, but not atomic: a kill during the append can
    tear the file, so whoever resumes from a checkpoint rewrites it whole (atomic_write)."""
    try:
        with zipfile.ZipFile(path, "a") as archive:
            for name, write in members.items():
                with archive.open(name, "w", force_zip64=True) as member:
                    write(member)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        raise write_error(path, err) from None


def atomic_write(path: Path, write, size: int = 0) -> None:
    """Write through a temporary file in the same folder, fsync, then rename: a kill or a full disk leaves the old file
    intact (and at worst a `.NAME.*.tmp` file, which open_run_folder removes). A full disk is a UserError that says how
    much space the file needs: `size` (an estimate), what it tried to write before the disk filled, or the file it
    replaces, whichever is largest."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise write_error(path, err) from None
    handle = None
    try:
        os.fchmod(fd, FILE_MODE)
        with RecordingFile(os.fdopen(fd, "r+b", buffering=0)) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        cause = handle.error if handle and handle.error else err
        if disk_full(cause):
            needed = max(size, handle.written if handle else 0, file_size(path))
            raise write_error(path, cause, needed=needed) from None
        if cause is not err:  # torch wrapped it (a Ctrl-C, an I/O error) in its own RuntimeError: raise the real one
            raise cause from None
        raise


class RecordingFile(io.BufferedRandom):
    """A binary file that remembers what a failed write raised: torch.save's zip writer swallows it (an OSError, or a
    KeyboardInterrupt that arrived inside the write) and raises `RuntimeError: [enforce fail at inline_container.cc]
    unexpected pos ...` instead, so a full disk is recognised from the write that failed, never guessed from a message,
    and Ctrl-C stays a Ctrl-C. A BufferedRandom: stable-baselines3's save() insists on an io type, and numpy writes
    to a BufferedWriter behind Python's back (ndarray.tofile, whose short write has no errno)."""

    def __init__(self, raw):
        super().__init__(raw)
        self.written, self.error = 0, None

    def write(self, data) -> int:
        self.written += memoryview(data).nbytes  # counted before: a write that fails tells the size too
        try:
            return super().write(data)
        except BaseException as err:
            self.error = err
            raise

    def flush(self) -> None:
        try:
            super().flush()
        except BaseException as err:
            self.error = err
            raise


def file_size(path: Path) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def is_read_only(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno == errno.EROFS


def human_size(size: int) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def write_error(path: Path, err: BaseException, needed: int = 0) -> Exception:
    """The one-line error for a file that cannot be written, or the original exception if it is not the user's.
    `needed`: the bytes the file takes (what a full disk must free, at least)."""
    path = Path(path)
    if disk_full(err):
        free = shutil.disk_usage(path.parent).free if path.parent.exists() else 0
        size = f"{path.name} needs about {human_size(needed)}, {human_size(free)} are free" if needed else "it is full"
        return UserError(
            f"no space left on the disk of {path.parent} ({size}); free some space and run again "
            "(--resume RUN_FOLDER continues an interrupted run from its last saved epoch)."
        )
    if isinstance(err, (PermissionError, FileNotFoundError, NotADirectoryError)) or is_read_only(err):
        return UserError(f"cannot write {path} ({err.strerror}); pick a writable path.")
    return err


def check_writable_folder(path, flag: str) -> Path:
    """Refuse, before any work, a folder that cannot be created or written: under a file, an existing file, or
    without write permission on its nearest existing parent."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder; pick another {flag}.")
    check_creatable(folder, path, flag)
    return folder


def check_creatable(path: Path, given, flag: str) -> None:
    """`path` can be created (or written) inside its nearest existing parent."""
    existing = path
    while not existing.exists():
        existing = existing.parent
    if existing != path and not existing.is_dir():
        raise UserError(f"{flag} {given} lies under the file {existing}; pick another {flag}.")
    if not os.access(existing if existing.is_dir() else existing.parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {given}: {existing} is not writable; pick a writable {flag}.")


def check_writable_file(path, flag: str) -> Path:
    """Refuse, before any work, an output file that could not be written."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; name a file.")
    check_creatable(path, path, flag)
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{flag} {path} is not writable; pick another {flag}.")
    return path


def save_checkpoint(path: Path, payload: dict) -> None:
    """A checkpoint of tensors and plain types only (numpy arrays become tensors), so that load_checkpoint reads it
    with torch.load(weights_only=True): reading a checkpoint never runs code (docs/security.md)."""
    import torch  # here, not at the top: the report reads run folders without loading torch

    payload = plain(payload)
    atomic_write(path, lambda handle: torch.save(payload, handle), size=payload_bytes(payload))


def plain(value):
    """`value` with numpy arrays as tensors and numpy numbers as Python's; anything but tensors, numbers, strings,
    None, lists, tuples and dicts is a bug of the caller (a TypeError), never pickled into a checkpoint."""
    import numpy as np
    import torch

    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(item) for item in value)
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError("an object array cannot go into a checkpoint (it would need a pickle to read)")
        return torch.tensor(value)
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (torch.Tensor, bool, int, float, str)):
        return value
    raise TypeError(f"a {type(value).__name__} cannot go into a checkpoint: save its state as tensors and plain types")


def arrays(value):
    """The inverse of `plain` for state kept as numpy arrays (a curriculum's scores, an agent's rollout): tensors in
    nested dicts and lists become numpy arrays."""
    if isinstance(value, dict):
        return {key: arrays(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(arrays(item) for item in value)
    import torch

    return value.numpy() if isinstance(value, torch.Tensor) else value


def payload_bytes(payload) -> int:
    """The bytes of the tensors and arrays in a nested payload: about what its checkpoint takes on disk."""
    if isinstance(payload, dict):
        return sum(payload_bytes(value) for value in payload.values())
    if isinstance(payload, (list, tuple)):
        return sum(payload_bytes(value) for value in payload)
    return getattr(payload, "nbytes", 0)  # a torch tensor or a numpy array


def save_json(path: Path, payload) -> None:
    atomic_write(path, lambda handle: handle.write((json.dumps(payload, indent=2) + "\n").encode()))


# What each reader of a checkpoint needs (a missing one is one line, not a KeyError later)
MODEL_KEYS = ("model", "class_names", "state_dict")  # models.model_from_checkpoint: a teacher
RUN_KEYS = (*MODEL_KEYS, "image_size", "epoch", "config")  # a run's best.pt or last.pt: evaluate.py, export.py
RESUME_KEYS = (*RUN_KEYS, "data", "optimizer", "scheduler", "scaler", "best_val_acc", "best_epoch", "curriculum",
               "teacher_cache", "temperature", "rows_logged")  # fmt: skip
CONVERT = "python scripts/convert_checkpoint.py"


def load_checkpoint(path, needs: tuple[str, ...] = ()) -> dict:
    """A checkpoint of train_student.py, read with torch.load(weights_only=True): tensors and plain types only, so
    reading it runs no code. One written before checkpoints held only those (numpy arrays in a curriculum's state)
    is converted on read; one that needs anything else is refused in one line naming the explicit conversion."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass the best.pt or last.pt of a train_student.py run.")
    checkpoint = read_weights_only(path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "model" not in checkpoint:
        raise UserError(f"{path} is not a train_student.py checkpoint (no model name and state_dict).")
    missing = [key for key in needs if key not in checkpoint]
    if (
        missing
        or not isinstance(checkpoint["state_dict"], dict)
        or not isinstance(checkpoint.get("class_names", []), list)
    ):
        what = f"no {', '.join(missing)}" if missing else "a state_dict or class_names of another kind"
        raise UserError(f"{path} is not a complete train_student.py checkpoint ({what}); pass a best.pt or last.pt "
                        "that train_student.py wrote.")  # fmt: skip
    return checkpoint


def read_weights_only(path: Path):
    """torch.load(weights_only=True); numpy arrays of numbers (checkpoints of before) through an allow-list of
    numpy's array types only, then as tensors; anything else that would need a pickle: one line, nothing run."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # weights_only refused a global: which ones, below (the file is scanned, nothing is unpickled)
    except Exception as err:  # truncated zip, wrong format: one message for all
        raise UserError(f"cannot read checkpoint {path} ({err}); pass a file written by train_student.py.") from None
    names = pickled_globals(path)
    if names and set(names) <= set(NUMPY_ARRAY_GLOBALS):
        try:
            with torch.serialization.safe_globals(numpy_array_globals()):
                return plain(torch.load(path, map_location="cpu", weights_only=True))
        except (pickle.UnpicklingError, TypeError):
            pass  # an object array, or another numpy type: refused below
    unsafe = [name for name in names if name not in NUMPY_ARRAY_GLOBALS]  # what makes it more than arrays
    found = f" ({', '.join(unsafe[:3])})" if unsafe else ""
    if unsafe and set(unsafe) <= set(CONVERTIBLE_GLOBALS):  # what older versions of this project wrote
        raise UserError(
            f"{path} holds pickled objects{found} that the scripts no longer read; convert it once with {CONVERT} "
            f"{path} (it reads them through an allow-list, nothing else)"
        )
    raise UserError(
        f"{path} holds pickled objects{found} that no checkpoint of this project holds, and unpickling a file can "
        "run code, so it was not read; pass a best.pt or last.pt that train_student.py wrote."
    )


def pickled_globals(path: Path) -> list[str]:
    """The Python names a checkpoint's pickle would import (torch scans its opcodes; nothing is executed)."""
    import torch

    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip checkpoint: torch cannot scan it
        return []


# What pickles a numpy array of numbers (numpy 1 and 2 name the module differently): no function among them that
# could do anything but build an array
NUMPY_ARRAY_GLOBALS = (
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray._reconstruct",
    "numpy.ndarray",
    "numpy.dtype",
    *(f"numpy.dtypes.{name}DType" for name in ("Bool", "Int8", "UInt8", "Int16", "UInt16", "Int32", "UInt32", "Int64",
                                              "UInt64", "Float16", "Float32", "Float64", "Long", "ULong")),
)  # fmt: skip


# What older versions of this project pickled besides arrays (an agent's reward scale, its numpy scalars):
# scripts/convert_checkpoint.py reads these through an allow-list (convertible_globals) and rewrites them as numbers
CONVERTIBLE_GLOBALS = ("stable_baselines3.common.running_mean_std.RunningMeanStd", "numpy._core.multiarray.scalar",
                       "numpy.core.multiarray.scalar")  # fmt: skip


def convertible_globals() -> list:
    """numpy_array_globals and the types of CONVERTIBLE_GLOBALS: classes rebuilt from their fields and numpy's scalar
    builder (a dtype and raw bytes in, a number out), no function that could do anything else."""
    import numpy as np
    from stable_baselines3.common.running_mean_std import RunningMeanStd

    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    return [*numpy_array_globals(), RunningMeanStd, *((scalar, name) for name in CONVERTIBLE_GLOBALS[1:])]


def numpy_array_globals() -> list:
    import numpy as np

    reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
    allowed = [(reconstruct, name) for name in NUMPY_ARRAY_GLOBALS[:2]] + [np.ndarray, np.dtype]
    for name in NUMPY_ARRAY_GLOBALS[4:]:
        kind = getattr(getattr(np, "dtypes", None), name.rsplit(".", 1)[1], None)
        if kind is not None:
            allowed.append((kind, name))
    return allowed


def remove_stale_temporaries(folder: Path) -> None:
    """Temporary files that a kill in the middle of atomic_write left behind (never the files themselves)."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]
