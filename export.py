"""Export a trained student out of the repo: a timm / Hugging Face folder (model.safetensors, config.json, a model card)
and model.onnx, each checked against the run's checkpoint on real test views, with the CPU latency of torch and
onnxruntime (docs/export.md).

    python export.py runs/kd                                   # runs/kd/export: both formats, from best.pt
    python export.py runs/kd --checkpoint last --format timm --out exports/kd-last
    python export.py runs/kd --push-to-hub USER/kd-student     # and upload it (a token: hf auth login)

The folder loads with timm.create_model("local-dir:DIR", pretrained=True), and with "hf-hub:USER/NAME" once
uploaded; evaluate.py takes it like a run folder. Nothing is written to --out unless every check passed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.data import create_transform, resolve_data_config

import models
from agents.config import RLConfig
from analysis.runs import describe, run_budget
from common.cli import command_line, field, parse_config
from common.errors import UserError, run_cli
from common.files import FILE_MODE, RUN_KEYS, check_writable_folder, load_checkpoint, save_json
from common.metrics import read_metrics
from common.run_folder import read_config
from data.splits import load_data
from data.transforms import eval_transform
from exporters import hf_folder as hf_export
from exporters import onnx_file as onnx_export
from training.config import TrainConfig
from training.devices import Placement, make_loader
from training.loop import count_parameters, evaluate

FORMATS = ("timm", "onnx")
SCRIPTS = {"train_student.py": TrainConfig, "train_student_rl.py": RLConfig}
# which figures of results.json belong to each checkpoint: (its epoch, test top-1, test top-5)
RESULT_KEYS = {
    "best": ("best_epoch", "test_acc", "test_acc5"),
    "last": ("last_epoch", "last_test_acc", "last_test_acc5"),
}


@dataclass
class Config:
    run: str = dataclasses.field(
        default="",
        metadata={"help": "the run folder to export (of train_student.py or train_student_rl.py)", "nargs": None},
    )
    out: str = field("", "the export folder; default RUN/export", group="output")
    format: str = field(
        "timm,onnx", "comma-separated: timm (model.safetensors, config.json, README.md), onnx (model.onnx)"
    )
    checkpoint: str = field(
        "best", "best: best.pt, the best-validation model; last: last.pt, the last epoch", choices=("best", "last")
    )
    overwrite: bool = field(False, "replace an earlier export in --out")
    license: str = field("other", "license of the model card (a hub id such as apache-2.0; other: the data's terms)")
    push_to_hub: str | None = field(
        None, "also upload the folder to this Hugging Face model repo; token: hf auth login or HF_TOKEN",
        group="hub", metavar="USER/NAME",
    )  # fmt: skip
    private: bool = field(False, "create the repo of --push-to-hub as private")
    dataset_name: str | None = field(
        None, "the name the card and export.json give a local data folder (default: the folder's name; no path)"
    )
    data: str | None = field(None, "data whose test views check the export; default: the run's", group="checks")
    check_images: int = field(128, "test views on which timm and onnxruntime must reproduce the checkpoint's logits")
    latency_batch: int = field(16, "images per call of the batch latency")
    repeats: int = field(20, "timed rounds of the latency (the median is reported)")
    threads: int = field(1, "CPU threads of torch and onnxruntime while the latency is timed")


def parse_formats(text: str) -> list[str]:
    formats = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in formats if name not in FORMATS]
    if unknown or not formats:
        raise UserError(
            f"--format {text}: unknown format {', '.join(unknown) or '(none)'}; use timm, onnx or timm,onnx."
        )
    return formats


def check_config(config: Config) -> None:
    for flag in ("check_images", "latency_batch", "repeats", "threads"):
        if getattr(config, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1.")


def read_run(config: Config) -> tuple[dict, Path]:
    """The run's config.json and the checkpoint to export, or one line on what is missing."""
    run = Path(config.run)
    if not run.is_dir():
        raise UserError(f"{run} is not a run folder; pass the folder of a train_student.py or train_student_rl.py run.")
    run_config = read_config(run, "export.py")
    path = run / f"{config.checkpoint}.pt"
    if not path.is_file():
        other = "--checkpoint last" if config.checkpoint == "best" else "--checkpoint best"
        raise UserError(
            f"{run} holds no {path.name} (its run never finished an epoch); export a run that did, or try {other}."
        )
    return run_config, path


def check_out(config: Config) -> Path:
    """--out (default RUN/export): writable, and either new, empty, or an earlier export that --overwrite replaces."""
    out = check_writable_folder(config.out or Path(config.run) / "export", "--out")
    if out.is_dir() and any(out.iterdir()):
        if not hf_export.is_export(out):
            raise UserError(f"--out {out} holds other files than an export; pick a new or empty folder.")
        if not config.overwrite:
            raise UserError(
                f"--out {out} already holds an export; pass --overwrite to replace it, or pick another --out."
            )
    return out


@contextlib.contextmanager
def staging(out: Path):
    """A folder beside `out` to write into; it becomes `out` (replacing an earlier export) only if the block ends
    without an error, so a failed check leaves --out as it was. Not named .*.tmp: in a run folder those are the
    atomic writes' leftovers, which a resumed run unlinks as files."""
    stage = out.parent / f".{out.name}.{os.getpid()}.partial"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        yield stage
        for path in stage.iterdir():  # the mode the umask gives, as every file of a run (safetensors writes 0600)
            path.chmod(FILE_MODE)
        if out.exists():
            shutil.rmtree(out)
        os.replace(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@torch.inference_mode()
def logits_of(model, images: torch.Tensor) -> torch.Tensor:
    return model(images)


def sample_views(view, count: int) -> torch.Tensor:
    """The first `count` test images as the student saw them in testing (data.eval_transform)."""
    return torch.stack([view[index][0] for index in range(min(count, len(view)))])


def checkpoint_figures(run: Path, kind: str, checkpoint: dict, model, data, same_data: bool) -> dict:
    """Test top-1 and top-5 of the exported checkpoint: the run's results.json where it tested this very checkpoint
    on this data, else tested here."""
    results = {}
    if (run / "results.json").is_file():
        with contextlib.suppress(ValueError, UnicodeDecodeError):  # a corrupt results.json: test again
            results = json.loads((run / "results.json").read_text())
    epoch_key, top1_key, top5_key = RESULT_KEYS[kind]
    figures = {"images": len(data.test)}
    if same_data and isinstance(results, dict) and results.get(epoch_key) == checkpoint["epoch"]:
        return {
            **figures,
            "top1": results[top1_key],
            "top5": results[top5_key],
            "source": "from the run's results.json",
        }
    cpu = torch.device("cpu")
    scores = evaluate(model, make_loader(data.test, 256, 0, cpu), Placement.on(cpu), "test")
    return {**figures, "top1": scores["acc1"], "top5": scores["acc5"], "source": "tested by export.py"}


def training_budget(run: Path, train_size: int) -> dict:
    """What the run cost (evaluate.py's Budget column): epochs, and samples trained on, proxy runs included."""
    metrics = read_metrics(run / "metrics.csv") if (run / "metrics.csv").is_file() else []
    epochs_of_data = run_budget(run, train_size) if metrics else 0.0
    return {"epochs_trained": max((int(row["epoch"]) for row in metrics), default=0), "epochs_of_data": epochs_of_data,
            "train_size": train_size, "samples": round(epochs_of_data * train_size)}  # fmt: skip


def export_record(config: Config, run_config: dict, checkpoint: dict, model, data, formats: list[str]) -> dict:
    """What export.json and the model card say: the source, the training, the test figures, the versions."""
    run, script = Path(config.run), run_config.get("script", "train_student.py")
    tested_on = config.data or run_config["data"]
    # published: the run by its folder's name, a local data folder by its name, no path of this machine
    name = run.resolve().name
    public = hf_export.public_config(run_config, name, hf_export.dataset_name(run_config["data"], config.dataset_name))
    return {
        "name": name,
        "description": describe(run_config),
        "source": {"run": name, "checkpoint": f"{config.checkpoint}.pt", "epoch": checkpoint["epoch"]},
        "command": command_line(SCRIPTS.get(script, TrainConfig), public, script),
        "config": public,
        "model": checkpoint["model"],
        "parameters": count_parameters(model),
        "image_size": checkpoint["image_size"],
        "class_names": checkpoint["class_names"],
        "data": hf_export.dataset_name(tested_on, config.dataset_name),
        "data_source": hf_export.dataset_source(tested_on)[0],
        "test": checkpoint_figures(
            run, config.checkpoint, checkpoint, model, data, config.data in (None, run_config["data"])
        ),
        "budget": training_budget(run, len(data.train)),
        "formats": formats,
        "license": config.license,
        "versions": hf_export.library_versions(),
    }


def write_timm(model, checkpoint: dict, folder: Path, license: str, data, images: torch.Tensor,
               logits: torch.Tensor) -> str:  # fmt: skip
    """The timm folder, then timm rebuilds the student from it alone: identical logits (the student's on `images`:
    `logits`) on the test views and the same preprocessing as training's evaluation, or one line and no export."""
    hf_export.save_timm_folder(model, checkpoint["class_names"], checkpoint["image_size"], folder, license)
    rebuilt = hf_export.load_timm_folder(folder)
    if not torch.equal(logits_of(rebuilt, images), logits):
        raise UserError(f"timm rebuilt the student from {folder.name} with other logits; nothing was written: "
                        "report the versions of timm and torch.")  # fmt: skip
    transform = create_transform(**resolve_data_config(model=rebuilt))
    image = data.test.source.image(0)
    if not torch.equal(transform(image), eval_transform(checkpoint["image_size"])(image)):
        raise UserError("timm's preprocessing of the exported config differs from training's; nothing was written: "
                        "report the version of timm.")  # fmt: skip
    return (
        f"timm check: local-dir: rebuilds the student (identical logits on {len(images)} test views, the same "
        "preprocessing)"
    )


def write_onnx(model, checkpoint: dict, folder: Path, images: torch.Tensor, logits: torch.Tensor,
               config: Config) -> tuple[dict, dict]:  # fmt: skip
    """model.onnx, its agreement with the torch model (`logits` on `images`, the test views; bounded), and the CPU
    latency of both."""
    path = folder / "model.onnx"
    size = checkpoint["image_size"]
    metadata = {"class_names": checkpoint["class_names"], **hf_export.data_config(size)}
    exported = onnx_export.export_onnx(model, size, path, metadata)
    session = onnx_export.onnx_session(path, config.threads)
    check = onnx_export.compare_logits(logits, onnx_export.run_session(session, images))
    onnx_export.check_agreement(check)
    latency = onnx_export.cpu_latency(model, session, images[: config.latency_batch], config.threads, config.repeats)
    return {**exported, "file": path.name, "check": check}, latency


def main(argv=None) -> None:
    config = parse_config(Config, argv, __doc__)
    formats = parse_formats(config.format)
    check_config(config)
    run_config, checkpoint_path = read_run(config)
    out = check_out(config)
    if config.push_to_hub:
        hf_export.check_push(config.push_to_hub, out)
    checkpoint = load_checkpoint(checkpoint_path, RUN_KEYS)
    model = models.model_from_checkpoint(checkpoint).eval()
    data = load_data(config.data or run_config["data"], checkpoint["image_size"])
    images = sample_views(data.test, config.check_images)
    logits = logits_of(model, images)  # what each format must reproduce
    record = export_record(config, run_config, checkpoint, model, data, formats)
    lines, latency = [], []
    with staging(out) as folder:
        if "timm" in formats:
            lines.append(write_timm(model, checkpoint, folder, config.license, data, images, logits))
        if "onnx" in formats:
            record["onnx"], record["latency"] = write_onnx(model, checkpoint, folder, images, logits, config)
            latency = onnx_export.latency_lines(record["latency"])
            lines += [onnx_export.agreement_line(record["onnx"]["check"]), *latency]
        (folder / "README.md").write_text(hf_export.model_card(record, config.push_to_hub, latency))
        save_json(folder / hf_export.EXPORT_FILE, record)
    test = record["test"]
    print(*lines, sep="\n")
    written = ", ".join(sorted(path.name for path in out.iterdir()))
    print(f"test top-1 {test['top1']:.2f}%, top-5 {test['top5']:.2f}% ({test['source']}); exported "
          f"{checkpoint_path} (epoch {checkpoint['epoch']}) to {out}: {written}")  # fmt: skip
    if config.push_to_hub:
        print(hf_export.upload_summary(out, config.push_to_hub, config.private), flush=True)
        print(f"uploaded to {hf_export.push_folder(out, config.push_to_hub, config.private)}")


if __name__ == "__main__":
    run_cli(main)
