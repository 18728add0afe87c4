"""Train a teacher once and cache it: the synthetic stand-in for "a ResNet-152 pretrained on ImageNet".

Takes train_student.py's flags and runs it with them. The run lands in `<--cache-dir>/teachers/<model>-<key>/`, where
the key hashes everything that defines the teacher (the resolved config, minus where and how it runs, and the data's
identity, which for synthetic data holds every generator option and the generator's version). A later call with the same
key reuses the finished run; any change trains a new one. Prints the path of the teacher's best.pt (progress goes
to stderr), so a script can pass it on:

    teacher=$(python pretrain_teacher.py --data synthetic:classes=100,train=20000 --student resnet18 --epochs 6)
    python train_student.py --data synthetic:classes=10,train=500 --teacher-checkpoint "$teacher" ...

A teacher trained on more classes than the students' set (a superset, named by WordNet ids) is sliced to the
students' classes by WordNet id (models.class_indices), exactly as an ImageNet teacher is.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from common.cli import config_dict, parse_config
from common.errors import run_cli
from common.run_folder import RESUME_MAY_CHANGE
from data.splits import load_data
from training.config import TrainConfig, check_config

ROOT = Path(__file__).resolve().parent
# flags that change where or how fast the teacher trains, not what it learns
NOT_THE_TEACHER = RESUME_MAY_CHANGE | {"out"}  # where and how fast it computes, not what


@dataclass
class TeacherConfig(TrainConfig):
    # the cache picks the teacher's run folder: these are no flags here
    NOT_APPLICABLE = dict.fromkeys(("out", "overwrite", "resume"), "the teacher's folder is <--cache-dir>/teachers/")


def teacher_key(config) -> str:
    """Hash of the resolved config (less NOT_THE_TEACHER) and the data's identity."""
    parts = {name: value for name, value in config_dict(config).items() if name not in NOT_THE_TEACHER}
    parts["data_identity"] = load_data(config.data, config.image_size, config.seed, config.min_scale).identity
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def pretrained_teacher(argv: list[str]) -> tuple[Path, bool]:
    """`(best.pt, reused)`: the cached teacher for train_student.py flags `argv`, trained first if not cached."""
    config = parse_config(TeacherConfig, argv, __doc__)
    check_config(config)
    folder = Path(config.cache_dir).expanduser() / "teachers" / f"{config.student}-{teacher_key(config)}"
    if (folder / "results.json").is_file():  # written last: a cut-off training run is redone
        return folder / "best.pt", True
    folder.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(ROOT / "train_student.py"), *argv, "--out", str(folder), "--overwrite"]
    trained = subprocess.run(command, stdout=sys.stderr.fileno())  # the training's lines on stderr: stdout is the path
    if trained.returncode:
        raise SystemExit(trained.returncode)  # train_student.py has said why, in one line
    return folder / "best.pt", False


def main(argv=None) -> None:
    path, reused = pretrained_teacher(sys.argv[1:] if argv is None else argv)
    print(f"{'reusing the cached' if reused else 'trained and cached the'} teacher {path}", file=sys.stderr)
    print(path)


if __name__ == "__main__":
    run_cli(main)
