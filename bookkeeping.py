"""Run bookkeeping: --resume checks, the run folder and its files, atomic writes, checkpoints and the metrics log.
No training here: engine.py trains, this module keeps the records; cli.py turns a config into its command line.

A leaf module: it imports none of the project's ML modules, and torch only inside the two checkpoint functions, so
the report can read runs without loading the training stack.
"""

from __future__ import annotations

import atexit
import csv
import dataclasses
import errno
import fcntl
import io
import json
import os
import shlex
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from cli import build_parser, config_dict, parse_config
from errors import UserError
from signals import stop_after_epoch_on_sigterm

# Every file a run writes into its folder: --overwrite clears exactly these.
RUN_FILES = (
    "config.json",
    "metrics.csv",
    "tb",
    "last.pt",
    "best.pt",
    "results.json",
    "difficulty.npy",
    "difficulty_history.npz",
    "coverage.npy",
    "agent.zip",
    "proxy",
)
# What marks a run: a completed epoch (its last.pt; an RL run's proxy epochs count) or its results. A folder with
# only the files of an attempt that died before its first epoch (config.json, a metrics row) is not a run.
RUN_MARKERS = ("last.pt", "proxy/last.pt", "results.json")


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; done once, at import, before any thread starts
    os.umask(mask)
    return mask


# mkstemp creates files 0600; a run's files get the mode open() would give them (0666 less the umask)
FILE_MODE = 0o666 & ~_read_umask()


# ----------------------------------------------------------------------------------------------------------------------
# Several processes: rank 0 writes


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch (torchrun sets RANK), or a single process."""
    return int(os.environ.get("RANK", "0")) == 0


# ----------------------------------------------------------------------------------------------------------------------
# Files: atomic writes, checkpoints, the run folder


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


# ----------------------------------------------------------------------------------------------------------------------
# One run per folder: a lock held for the run's life

LOCK_FILE = ".lock"  # in the locked folder; holds one line naming the process that holds it
_held_locks: dict[str, FolderLock] = {}


class FolderLock:
    """An exclusive flock(2) on FOLDER/.lock. The OS drops it when the process dies (a killed run leaves no stale lock,
    at worst a stale file that the next holder reuses); release() or a clean exit removes the file."""

    def __init__(self, folder: Path, fd: int):
        self.folder, self.path, self.fd = folder, folder / LOCK_FILE, fd

    def release(self) -> None:
        if self.fd is None:
            return
        if same_file(self.path, self.fd):  # unlinked while held, so a waiter that opened it retries on a new file
            self.path.unlink()
        os.close(self.fd)
        self.fd = None
        _held_locks.pop(str(self.folder.resolve()), None)

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def hold_folder_lock(folder, flag: str = "--out") -> FolderLock:
    """Lock FOLDER (created if missing) for this process, or refuse in one line naming the process that holds it.
    Held until release() or the process ends; a second call in the same process returns the same lock. Run scripts
    take it before anything in the folder is cleared or written; under torchrun only rank 0 calls it."""
    folder = Path(folder).expanduser()
    key = str(folder.resolve())
    if key in _held_locks:
        return _held_locks[key]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):  # a filesystem without locks (Lustre w/o flock)
                    print(f"warning: {folder} cannot be locked ({err.strerror}); run one process at a time in it",
                          file=sys.stderr)  # fmt: skip
                    break
                os.close(fd)
                raise UserError(
                    f"{flag} {folder} is in use by {read_lock_holder(folder)}; wait for that run to end (or stop it), "
                    "or pick another folder."
                ) from None
            if same_file(folder / LOCK_FILE, fd):
                break
            os.close(fd)  # its holder removed the file between our open and our lock: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, lock_holder_line().encode())
    except OSError as err:
        raise write_error(folder / LOCK_FILE, err) from None
    lock = _held_locks[key] = FolderLock(folder, fd)
    return lock


def same_file(path: Path, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def lock_holder_line() -> str:
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    return f"pid {os.getpid()} on {socket.gethostname()} ({command[:300]})\n"


def read_lock_holder(folder: Path) -> str:
    try:
        line = (folder / LOCK_FILE).read_text().strip()
    except OSError:
        line = ""
    return line or "another process"


def release_folder_locks() -> None:
    for lock in list(_held_locks.values()):
        lock.release()


def forget_folder_locks() -> None:
    """In a forked child (a DataLoader worker): close its copy of each lock's descriptor without unlocking, so the
    lock still ends with the process that took it, not with the last of its workers."""
    for lock in _held_locks.values():
        os.close(lock.fd)
        lock.fd = None
    _held_locks.clear()


atexit.register(release_folder_locks)
os.register_at_fork(after_in_child=forget_folder_locks)


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
    import torch  # here, not at the top: the report reads run folders without loading torch

    atomic_write(path, lambda handle: torch.save(payload, handle), size=payload_bytes(payload))


def payload_bytes(payload) -> int:
    """The bytes of the tensors and arrays in a nested payload: about what its checkpoint takes on disk."""
    if isinstance(payload, dict):
        return sum(payload_bytes(value) for value in payload.values())
    if isinstance(payload, (list, tuple)):
        return sum(payload_bytes(value) for value in payload)
    return getattr(payload, "nbytes", 0)  # a torch tensor or a numpy array


def save_json(path: Path, payload) -> None:
    atomic_write(path, lambda handle: handle.write((json.dumps(payload, indent=2) + "\n").encode()))


def load_checkpoint(path) -> dict:
    import torch  # here, not at the top: the report reads run folders without loading torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass the best.pt or last.pt of a train_student.py run.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated zip, pickle error, wrong format: one message for all
        raise UserError(f"cannot read checkpoint {path} ({err}); pass a file written by train_student.py.") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "model" not in checkpoint:
        raise UserError(f"{path} is not a train_student.py checkpoint (no model name and state_dict).")
    return checkpoint


def holds_run(folder) -> bool:
    """The folder holds a run that finished at least one epoch (see RUN_MARKERS)."""
    return any((Path(folder) / name).exists() for name in RUN_MARKERS)


def prepare_run_folder(out: str, overwrite: bool, dry_run: bool = False) -> Path:
    """A new run folder. An existing run is never touched unless the user asks with --overwrite; the files of an
    attempt that died before its first epoch are cleared without asking. `dry_run` only checks, so a script can
    refuse before its slow set-up and clear the folder only once that set-up worked."""
    folder = check_writable_folder(out, "--out")
    if is_main_process() and (folder.is_dir() or not dry_run):  # locked before anything in it is read or cleared
        hold_folder_lock(folder, "--out")
    existing = [name for name in RUN_FILES if (folder / name).exists()]
    if holds_run(folder) and not overwrite:
        raise UserError(
            f"{folder} already holds a run ({', '.join(existing)}); pick another --out, --resume it, or --overwrite."
        )
    if dry_run:
        return folder
    if existing and not holds_run(folder):
        print(f"clearing {folder}: its run never finished an epoch ({', '.join(existing)})", file=sys.stderr)
    for name in existing:
        target = folder / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def results_line(results: dict, folder) -> str:
    """The one line a finished run prints: its figures are in results.json."""
    return (
        f"test top-1 {results['test_acc']:.2f}% (best-val checkpoint, epoch {results['best_epoch']}), "
        f"{results['last_test_acc']:.2f}% (last epoch); {Path(folder) / 'results.json'}"
    )


def read_config(folder: Path, flag: str) -> dict:
    """The config.json of a run folder, or one line on what is wrong with it."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise UserError(f"{flag} {folder}: no config.json there; pass the folder of a run of train_student.py.")
    try:
        saved = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        saved = None
    if not isinstance(saved, dict):
        raise UserError(f"{path} is not a run's config (not a JSON object); restore it, or start a new run.")
    return saved


def remove_stale_temporaries(folder: Path) -> None:
    """Temporary files that a kill in the middle of atomic_write left behind (never the files themselves)."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


# Flags that may differ on --resume: they change where and how fast a run computes, not what it computes.
RESUME_MAY_CHANGE = {"resume", "workers", "device", "cache_dir", "overwrite"}


def resume_config(config_class, argv, script: str):
    """The config of the run in `--resume FOLDER`, and its last.pt (None if only proxy epochs finished before the kill).

    Flags given together with --resume must agree with the run's config, except RESUME_MAY_CHANGE."""
    given = vars(build_parser(config_class, explicit_only=True).parse_args(argv))
    folder = Path(given["resume"])
    saved = read_config(folder, "--resume")
    check_writable_folder(folder, "--resume")
    if is_main_process():
        hold_folder_lock(folder, "--resume")
    if saved.get("script") != script:
        raise UserError(f"--resume {folder}: that run was made by {saved.get('script')}; resume it with that script.")
    if not holds_run(folder):
        raise UserError(
            f"--resume {folder}: that run never finished an epoch, so there is nothing to resume; run its command "
            "again without --resume (it clears that attempt's files)."
        )
    names = {f.name for f in dataclasses.fields(config_class)}
    config = config_class(**{name: value for name, value in saved.items() if name in names})
    conflicts = [
        name for name, value in given.items() if name not in RESUME_MAY_CHANGE and value != getattr(config, name)
    ]
    if conflicts:
        flags = ", ".join("--" + name.replace("_", "-") for name in conflicts)
        raise UserError(
            f"--resume {folder}: {flags} differ from the run's config.json; resume without them, "
            "or start a new run with another --out."
        )
    for name in RESUME_MAY_CHANGE & given.keys():
        setattr(config, name, given[name])
    config.out = str(folder)
    last = folder / "last.pt"
    return config, (load_checkpoint(last) if last.exists() else None)


def start_run(config_class, argv, script: str, description: str, default_out, check):
    """Parse a script's flags for a new run or a --resume; refuse bad flags and an existing --out before any slow
    set-up. Returns (config, last.pt of the resumed run or None)."""
    config = parse_config(config_class, argv, description)
    stop_after_epoch_on_sigterm()
    if config.resume:
        config, checkpoint = resume_config(config_class, argv, script)
        check(config)
        return config, checkpoint
    config.out = config.out or default_out(config)
    check(config)
    prepare_run_folder(config.out, config.overwrite, dry_run=True)
    return config, None


def open_run_folder(config, script: str) -> Path:
    """The run folder, once set-up worked: a resumed one as it is, a new one cleared and given its config.json."""
    if not is_main_process():  # rank 0 alone writes
        return Path(config.out)
    if config.resume:
        remove_stale_temporaries(config.out)
        return Path(config.out)
    folder = prepare_run_folder(config.out, config.overwrite)
    remove_stale_temporaries(folder)
    save_json(folder / "config.json", {"script": script, **config_dict(config)})
    return folder


class MetricsLog:
    """metrics.csv (one row per epoch, unrounded values) and TensorBoard scalars under grouped names."""

    GROUPS = {"loss": "losses", "reward": "reward", "difficulty": "curriculum", "target": "curriculum"}

    def __init__(self, folder: Path, enabled: bool | None = None):
        self.folder = folder
        self.path = folder / "metrics.csv"
        self.enabled = is_main_process() if enabled is None else enabled
        self.writer = None  # opened at the first row, so a resumed run can purge the events it will redo
        self.count = 0  # rows in metrics.csv

    def truncate(self, rows: int) -> None:
        """On resume: keep the first `rows` rows, those the checkpoint saw (a kill can land between the CSV row and
        the checkpoint of an epoch, which the resumed run then redoes)."""
        logged = read_metrics(self.path) if self.path.exists() else []
        if len(logged) > rows and self.enabled:
            self._write_rows(logged[:rows], list(logged[0].keys()))
        self.count = min(rows, len(logged))

    def _write_rows(self, rows: list[dict], columns: list[str]) -> None:
        def write(handle):
            text = csv.DictWriter(_TextSink(handle), fieldnames=columns)
            text.writeheader()
            text.writerows(rows)

        atomic_write(self.path, write)

    def append(self, row: dict) -> None:
        if not self.enabled:
            return
        rows = read_metrics(self.path) if self.path.exists() else []
        columns = list(rows[0].keys()) if rows else list(row.keys())
        missing = [key for key in row if key not in columns]
        columns += missing
        self._write_rows(rows + [{key: _plain(value) for key, value in row.items()}], columns)
        step = self.count = len(rows) + 1  # epochs logged so far: keeps counting across RL episodes and resumes
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.folder / "tb"), purge_step=step)
        for key, value in row.items():
            if isinstance(value, (int, float)) and key not in ("epoch", "episode"):
                group = next((g for word, g in self.GROUPS.items() if word in key), "charts")
                self.writer.add_scalar(f"{group}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer:
            self.writer.close()


class _TextSink:
    """Lets csv write str into a binary handle (atomic_write hands out binary files)."""

    def __init__(self, handle):
        self.handle = handle

    def write(self, text: str) -> None:
        self.handle.write(text.encode())


def _plain(value):
    return repr(value) if isinstance(value, float) else value


def read_metrics(path) -> list[dict]:
    """metrics.csv as a list of rows; a file cut short or edited out of shape is one line naming it."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; pass the folder of a run that finished at least one epoch.") from None
    except (csv.Error, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not a metrics table ({err}); restore it, or leave that run out.") from None
    for number, row in enumerate(rows, start=2):
        if None in row or None in row.values():  # more or fewer cells than the header names
            raise UserError(f"{path} is cut short or malformed at line {number}; restore it, or leave that run out.")
    return rows
