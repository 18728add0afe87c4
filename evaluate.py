"""Test the teacher and trained students on the test split and print the results table (markdown).

    python evaluate.py runs/labels runs/kd runs/kd-teacher runs/rl            # teacher from the runs' config
    python evaluate.py runs/*/ --json results.json --no-teacher

Each run folder is tested twice: its best-validation checkpoint (best.pt, the figure the table reports) and its
last epoch (last.pt), labelled so nobody confuses the two.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import models
from data import load_data
from engine import (
    amp_dtype,
    count_parameters,
    evaluate,
    field,
    load_checkpoint,
    load_teacher,
    make_loader,
    parse_config,
    pick_device,
    save_json,
)
from errors import UserError, run_cli


@dataclass
class Config:
    runs: list = dataclasses.field(
        default_factory=list, metadata={"help": "run folders (or .pt checkpoints) to test", "nargs": "*"}
    )
    data: str | None = field(None, "data to test on; default: the data the first run trained on")
    teacher: str | None = field(None, "timm ImageNet teacher (sliced to the data's classes); default: the first run's")
    teacher_checkpoint: str | None = field(
        None, "a train_student.py checkpoint as the teacher; default: the first run's"
    )
    teacher_weights: str | None = field(None, "local weights file of --teacher (no network)")
    no_teacher: bool = field(False, "leave the teacher row out")
    batch_size: int = field(256, "evaluation batch size")
    workers: int = field(4, "DataLoader worker processes")
    device: str = field("auto", "auto, cpu, cuda or cuda:N")
    amp: bool = field(False, "mixed precision inference")
    json: str | None = field(None, "also write the table's figures to this JSON file")


def read_run(path: str) -> dict:
    """A run folder's (or a lone checkpoint's) config and checkpoints."""
    path = Path(path)
    if path.is_file():
        checkpoint = load_checkpoint(path)
        return {"name": str(path), "config": checkpoint["config"], "best": path, "last": None}
    if not (path / "best.pt").is_file():
        raise UserError(f"{path} is not a finished run folder (no best.pt); pass folders written by train_student.py.")
    config = json.loads((path / "config.json").read_text())
    last = path / "last.pt" if (path / "last.pt").is_file() else None
    return {"name": str(path), "config": config, "best": path / "best.pt", "last": last}


def describe(config: dict) -> str:
    """A row label in the reference table's words, from a run's config."""
    weight = config["label_weight"]
    if weight == 1:
        loss = "labels only"
    elif weight == 0:
        loss = "teacher only"
    else:
        loss = f"{weight:.0%} labels, {1 - weight:.0%} teacher"
    if config.get("script") == "train_student_rl.py":
        kind = "KD + curriculum chosen by the RL agent"
    elif config.get("curriculum", "none") != "none":
        kind = f"KD + {config['curriculum']} curriculum"
    else:
        kind = "KD" if weight < 1 else ""
    details = ", ".join(part for part in (kind, loss) if part)
    return f"Student ({config['student']}, {details})"


def teacher_row(config: Config, first_run: dict, data, loader, device, dtype) -> dict:
    """Evaluate the teacher named by the flags, or else by the first run's config."""
    source = first_run["config"] if first_run else {}
    teacher_config = dataclasses.make_dataclass("TeacherConfig", ["teacher", "teacher_checkpoint", "teacher_weights"])(
        config.teacher or source.get("teacher", "resnet152.tv_in1k"),
        config.teacher_checkpoint or (None if config.teacher else source.get("teacher_checkpoint")),
        config.teacher_weights or (None if config.teacher else source.get("teacher_weights")),
    )
    teacher = load_teacher(teacher_config, data).to(device)
    scores = evaluate(teacher, loader, device, dtype, "test teacher")
    if teacher_config.teacher_checkpoint:
        label = f"Teacher ({load_checkpoint(teacher_config.teacher_checkpoint)['model']}, trained on this data)"
    else:
        label = f"Teacher ({teacher_config.teacher}, ImageNet weights)"
    return {"model": label, "top1": scores["acc1"], "top5": scores["acc5"], "params": count_parameters(teacher)}


def student_row(run: dict, data_cache: dict, config: Config, device, dtype) -> dict:
    best = load_checkpoint(run["best"])
    loader = test_loader(config.data or run["config"]["data"], best["image_size"], data_cache, config, device)
    model = models.model_from_checkpoint(best).to(device)
    scores = evaluate(model, loader, device, dtype, f"test {run['name']}")
    row = {
        "model": describe(run["config"]),
        "run": run["name"],
        "top1": scores["acc1"],
        "top5": scores["acc5"],
        "params": count_parameters(model),
        "best_epoch": best["epoch"],
        "last_top1": None,
    }
    if run["last"]:
        last = load_checkpoint(run["last"])
        model.load_state_dict(last["state_dict"])
        row["last_top1"] = evaluate(model, loader, device, dtype, "test last")["acc1"]
        row["last_epoch"] = last["epoch"]
    return row


def test_loader(data_name: str, image_size: int, cache: dict, config: Config, device):
    """One loaded dataset per (data, image size), shared by the rows that use it."""
    key = (data_name, image_size)
    if key not in cache:
        data = load_data(data_name, image_size)
        cache[key] = (data, make_loader(data.test, config.batch_size, config.workers, device))
    return cache[key][1]


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| Model | Test top-1 (best-val checkpoint) | Test top-5 | Test top-1 (last epoch) | Parameters |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        last = f"{row['last_top1']:.2f}%" if row.get("last_top1") is not None else "—"
        lines.append(
            f"| {row['model']} | {row['top1']:.2f}% | {row['top5']:.2f}% | {last} | {row['params'] / 1e6:.2f}M |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    config = parse_config(Config, argv, description=__doc__)
    runs = [read_run(path) for path in config.runs]
    if not runs and (config.no_teacher or not config.data):
        raise UserError("nothing to evaluate; pass run folders, or --data with a teacher flag for the teacher alone.")
    device = pick_device(config.device)
    dtype = amp_dtype(device, config.amp)
    data_cache, rows = {}, []
    if not config.no_teacher:
        first = runs[0] if runs else None
        data_name = config.data or first["config"]["data"]
        image_size = load_checkpoint(first["best"])["image_size"] if first else None
        loader = test_loader(data_name, image_size, data_cache, config, device)
        rows.append(teacher_row(config, first, data_cache[(data_name, image_size)][0], loader, device, dtype))
    rows += [student_row(run, data_cache, config, device, dtype) for run in runs]
    print(markdown_table(rows))
    if config.json:
        save_json(Path(config.json), rows)


if __name__ == "__main__":
    run_cli(main)
