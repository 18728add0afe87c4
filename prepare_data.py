"""Write a copy of a dataset with every image reduced to a maximum side, in timm/mini-imagenet's parquet schema.

    python prepare_data.py --data timm/mini-imagenet --out ~/data/mini-imagenet-320 --max-side 320
    python train_student.py --data ~/data/mini-imagenet-320 ...

Decoding a smaller JPEG costs less (FFCV's `max_res`): the fast path's training views per core roughly double at a
maximum side of 320 (docs/data-path.md). The copy is other data (its own cache keys); images already within the
maximum side are copied byte for byte. Also builds the ImageNet-size parquet set that the tests and bench.py use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.cli import field, parse_config
from common.errors import UserError, run_cli
from data.jpegs import write_reduced_copy
from data.splits import load_data


@dataclass
class PrepareConfig:
    data: str = field("timm/mini-imagenet", "hub dataset or local folder (ImageFolder or parquet)", group="data")
    out: str = field("", "folder to write (<split>-NNNNN.parquet files); must not exist yet")
    max_side: int = field(320, "longest side of the written images (larger ones are shrunk, aspect kept)")
    quality: int = field(90, "JPEG quality of the shrunk images")
    workers: int = field(4, "processes that re-encode images")


def prepare(config: PrepareConfig) -> None:
    out = Path(config.out).expanduser()
    if not config.out or out.exists():
        raise UserError(f"--out {config.out!r} must name a folder that does not exist yet; pick a new one.")
    if config.max_side < 32:
        raise UserError(f"--max-side {config.max_side} is too small; use e.g. 320 (the views are 224 px).")
    write_reduced_copy(load_data(config.data), out, config.max_side, config.quality, config.workers)


def main(argv=None) -> None:
    prepare(parse_config(PrepareConfig, argv, description=__doc__))


if __name__ == "__main__":
    run_cli(main)
