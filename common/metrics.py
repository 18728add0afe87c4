"""A run's metrics log: metrics.csv (a row per epoch, unrounded) and TensorBoard scalars under grouped names, and the
reader of a metrics.csv that names what is wrong with one. No ML imports: the report reads runs with it."""

from __future__ import annotations

import csv
from pathlib import Path

from common.errors import UserError
from common.files import atomic_write
from common.run_folder import is_main_process


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
