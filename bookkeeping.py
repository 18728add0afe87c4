"""Run bookkeeping: --resume checks, the run folder and its files, atomic writes, checkpoints and the metrics log.
No training here: engine.py trains, this module keeps the records; cli.py turns a config into its command line.

A leaf module: it imports none of the project's ML modules, and torch only inside the two checkpoint functions, so
the report can read runs without loading the training stack.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from cli import build_parser, config_dict, parse_config
from errors import UserError

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


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: a kill leaves the old file intact (and at
    worst a `.NAME.*.tmp` file, which open_run_folder removes). A full disk is a UserError."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise write_error(path, err) from None
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if disk_full(err, path):
            raise write_error(path, err) from None
        raise


def disk_full(err: BaseException, path: Path) -> bool:
    """ENOSPC, raised as is or wrapped by torch.save's zip writer as a RuntimeError."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(err, RuntimeError) and "write" in str(err):
        return shutil.disk_usage(path.parent).free < 2**20
    return False


def write_error(path: Path, err: BaseException) -> Exception:
    """The one-line error for a file that cannot be written, or the original exception if it is not the user's."""
    if disk_full(err, path):
        return UserError(f"no space left on the disk of {path.parent}; free some space and run again (--resume a run).")
    if isinstance(err, (PermissionError, FileNotFoundError, NotADirectoryError)):
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
    import torch  # here, not at the top: the report reads run folders without loading torch

    atomic_write(path, lambda handle: torch.save(payload, handle))


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
