"""Run bookkeeping: --resume checks, the run folder and its lock, and the metrics log. No training here: engine.py
trains, this module keeps the records; files.py writes them (atomic writes, checkpoints); cli.py turns a config into
its command line.

A leaf module: it imports none of the project's ML modules, and torch only for TensorBoard, so the report can read
runs without loading the training stack.
"""

from __future__ import annotations

import atexit
import dataclasses
import errno
import fcntl
import json
import os
import shlex
import shutil
import socket
import sys
from pathlib import Path

from common.cli import build_parser, config_dict, parse_config
from common.errors import UserError
from common.files import (
    FILE_MODE,
    RESUME_KEYS,
    check_writable_folder,
    load_checkpoint,
    remove_stale_temporaries,
    save_json,
    write_error,
)
from common.signals import stop_after_epoch_on_sigterm

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


# ----------------------------------------------------------------------------------------------------------------------
# Several processes: rank 0 writes


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch (torchrun sets RANK), or a single process."""
    return int(os.environ.get("RANK", "0")) == 0


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


# Flags that may differ on --resume: they change where and how fast a run computes, not what it computes.
RESUME_MAY_CHANGE = {"resume", "workers", "device", "cache_dir", "overwrite", "tf32", "memory_format"}
# the flags of RESUME_MAY_CHANGE that a sweep passes its runs: a sweep continued with other values is the same sweep
WHERE_FLAGS = ("--device", "--workers", "--cache-dir")


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
    before = getattr(config_class, "BEFORE_FIELD", {})  # a field the run's version did not have: what it computed
    config = config_class(**{**{name: value for name, value in before.items() if name not in saved},
                             **{name: value for name, value in saved.items() if name in names}})  # fmt: skip
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
    return config, (load_checkpoint(last, RESUME_KEYS) if last.exists() else None)


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
    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's processes: --batch-size is split over them
    save_json(folder / "config.json", {"script": script, **config_dict(config), "world_size": world_size})
    return folder
