"""Test the teacher and trained students on the test split and print the results table (markdown).

    python evaluate.py runs/labels runs/kd runs/kd-teacher runs/rl            # teacher from the runs' config
    python evaluate.py runs/*/ --json results.json --no-teacher
    python evaluate.py runs/table/*-s*/ --report runs/table/report         # seeds aggregated, figures + report.md
    python evaluate.py runs/kd runs/kd/export --no-teacher                 # a run beside its export (export.py)

Each run folder is tested twice: its best-validation checkpoint (best.pt, the figure the table reports) and its
last epoch (last.pt), labelled so nobody confuses the two. Runs whose config differs only in the seed (and the run
folder) are one row: mean +- sample std over the n seeds. A folder written by export.py is tested as timm loads it
(local-dir:), in a row of its own that says it is an export.
"""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import models
from analysis.report import write_report
from analysis.runs import describe, run_budget
from common.cli import field, parse_config
from common.errors import UserError, run_cli
from common.files import RUN_KEYS, check_writable_file, check_writable_folder, load_checkpoint, save_json
from common.metrics import read_metrics
from common.run_folder import read_config
from data.splits import load_data
from exporters import hf_folder as hf_export
from training.devices import Placement, amp_dtype, close_loader, default_workers, make_loader, pick_device
from training.loop import count_parameters, evaluate
from training.teacher import TeacherSpec, load_teacher

# config entries that do not change what is trained: runs differing only in these are seeds of one row
NOT_THE_CONFIGURATION = ("seed", "out", "overwrite", "resume", "policy")


@dataclass
class Config:
    runs: list = dataclasses.field(
        default_factory=list,
        metadata={"help": "run folders (or .pt checkpoints, or folders of export.py) to test", "nargs": "*"},
    )
    data: str | None = field(None, "data to test on; default: the data the first run trained on", group="data")
    teacher: str | None = field(
        None, "timm ImageNet teacher (sliced to the data's classes); default: the first run's", group="models"
    )
    teacher_checkpoint: str | None = field(
        None, "a train_student.py checkpoint as the teacher; default: the first run's"
    )
    teacher_weights: str | None = field(None, "local weights file of --teacher (no network)")
    no_teacher: bool = field(False, "leave the teacher row out")
    batch_size: int = field(256, "evaluation batch size", group="run")
    workers: int | None = field(None, "DataLoader worker processes; default: the cores this process may use, less one")
    device: str = field("auto", "auto, cpu, cuda or cuda:N")
    amp: bool = field(False, "mixed precision inference")
    json: str | None = field(
        None, "also write the table's figures (per run and aggregated) to this JSON file", group="output"
    )
    report: str | None = field(None, "also write figures and report.md (the table beside them) into this folder")


def read_run(path: str) -> dict:
    """A run folder's (or a lone checkpoint's) config and checkpoints."""
    path = Path(path)
    if path.is_file():
        checkpoint = load_checkpoint(path, RUN_KEYS)
        return {"name": str(path), "config": checkpoint["config"], "best": path, "last": None}
    if not path.exists():
        raise UserError(f"{path} does not exist; check the path of the run folder.")
    if hf_export.is_export(path):
        export = hf_export.read_export(path)
        return {"name": str(path), "config": export["config"], "best": None, "last": None, "export": export}
    config = read_config(path, "run folder")
    last = path / "last.pt" if (path / "last.pt").is_file() else None
    return {"name": str(path), "config": config, "best": path / "best.pt", "last": last}


def read_runs(paths: list[str]) -> list[dict]:
    """The runs among the arguments. A folder without best.pt holds no finished run (e.g. the report folder that
    `runs/table/*/` also matches): skipped with one line on stderr each; an error if no argument is a run."""
    runs, skipped = [], []
    for path in map(Path, paths):
        if path.is_dir() and not (path / "best.pt").is_file() and not hf_export.is_export(path):
            skipped.append(path)
        else:
            runs.append(read_run(path))
    if paths and not runs:
        raise UserError(
            f"no finished run among the arguments (no best.pt in {', '.join(map(str, skipped))}); pass the folders "
            "of train_student.py or train_student_rl.py runs that finished at least one epoch."
        )
    for path in skipped:
        print(f"skipping {path}: no best.pt there, so no finished run", file=sys.stderr)
    return runs


def teacher_row(config: Config, first_run: dict, data, loader, placement: Placement) -> dict:
    """Evaluate the teacher named by the flags, or else by the first run's config."""
    source = first_run["config"] if first_run else {}
    name = config.teacher or source.get("teacher", "resnet152.tv_in1k")
    teacher_checkpoint = config.teacher_checkpoint or (None if config.teacher else source.get("teacher_checkpoint"))
    weights = config.teacher_weights or (None if config.teacher else source.get("teacher_weights"))
    teacher = placement.put(load_teacher(data, TeacherSpec(name, teacher_checkpoint, weights)))
    scores = evaluate(teacher, loader, placement, "test teacher")
    if teacher_checkpoint:
        checkpoint = load_checkpoint(teacher_checkpoint)
        trained_on = len(checkpoint["class_names"])
        if checkpoint["class_names"] == data.class_names:
            label = f"Teacher ({checkpoint['model']}, trained on this data)"
        else:
            sliced = f"pretrained on {trained_on} classes, sliced to these {len(data.class_names)}"
            label = f"Teacher ({checkpoint['model']}, {sliced})"
    else:
        label = f"Teacher ({name}, ImageNet weights)"
    return {"model": label, "top1": scores["acc1"], "top5": scores["acc5"], "params": count_parameters(teacher)}


def export_row(run: dict, data_cache: dict, config: Config, placement: Placement) -> dict:
    """A folder of export.py, its model built by timm from the folder alone; its figures go to the column of the
    checkpoint it was exported from, and its budget is its run's."""
    export = run["export"]
    if not config.data and export.get("data_source") == "imagefolder":  # export.json names the folder, not its path
        raise UserError(
            f"{run['name']} was exported from a run on the local folder {export['data']!r}, whose path an export "
            "does not keep; pass that folder with --data DIR."
        )
    loader = test_loader(config.data or export["data"], export["image_size"], data_cache, config, placement.device)
    model = placement.put(hf_export.load_timm_folder(Path(run["name"])))
    scores = evaluate(model, loader, placement, f"test {run['name']}")
    source = export["source"]
    columns = ("top1", "top5") if source["checkpoint"] == "best.pt" else ("last_top1", "last_top5")
    row = {
        "model": f"{describe(run['config'])}, export of {source['checkpoint']} (epoch {source['epoch']})",
        "run": run["name"],
        "seed": run["config"].get("seed"),
        **dict.fromkeys(("top1", "top5", "last_top1", "last_top5")),
        "params": count_parameters(model),
        "budget": export["budget"]["epochs_of_data"] or None,
        "export": True,
    }
    row[columns[0]], row[columns[1]] = scores["acc1"], scores["acc5"]
    return row


def student_row(run: dict, data_cache: dict, config: Config, placement: Placement) -> dict:
    if run.get("export"):
        return export_row(run, data_cache, config, placement)
    best = load_checkpoint(run["best"], RUN_KEYS)
    data_name = config.data or run["config"]["data"]
    loader = test_loader(data_name, best["image_size"], data_cache, config, placement.device)
    train_size = len(data_cache[(data_name, best["image_size"])][0].train)
    folder = Path(run["name"])
    budget = run_budget(folder, train_size) if (folder / "metrics.csv").is_file() else None
    model = placement.put(models.model_from_checkpoint(best))
    scores = evaluate(model, loader, placement, f"test {run['name']}")
    row = {
        "model": describe(run["config"]),
        "run": run["name"],
        "seed": run["config"].get("seed"),
        "top1": scores["acc1"],
        "top5": scores["acc5"],
        "params": count_parameters(model),
        "best_epoch": best["epoch"],
        "budget": budget,
        "last_top1": None,
        "last_top5": None,
    }
    if run["last"]:
        last = load_checkpoint(run["last"], RUN_KEYS)
        model.load_state_dict(last["state_dict"])
        last_scores = evaluate(model, loader, placement, "test last")
        row["last_top1"], row["last_top5"], row["last_epoch"] = last_scores["acc1"], last_scores["acc5"], last["epoch"]
    return row


def image_size_of(run: dict) -> int:
    return run["export"]["image_size"] if run.get("export") else load_checkpoint(run["best"], RUN_KEYS)["image_size"]


def group_runs(runs: list[dict]) -> list[list[dict]]:
    """Runs of one configuration (equal configs but for NOT_THE_CONFIGURATION), in the order they were given."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        kept = {key: value for key, value in run["config"].items() if key not in NOT_THE_CONFIGURATION}
        # an export is never pooled with runs (nor with exports of other checkpoints)
        kept["export of"] = run["export"]["source"]["checkpoint"] if run.get("export") else None
        groups.setdefault(json.dumps(kept, sort_keys=True), []).append(run)
    return list(groups.values())


def group_name(run_rows: list[dict]) -> str:
    """A short name for curves and the table: the run folder, without its -s<seed> suffix when seeds are pooled; an
    export's is PARENT/FOLDER (runs/kd/export: kd/export)."""
    path = Path(run_rows[0]["run"])
    export = run_rows[0].get("export")
    folder = path.parent if path.is_file() or export else path
    name = re.sub(r"-s\d+$", "", folder.name) if len(run_rows) > 1 else folder.name
    return f"{name}/{path.name}" if export else name


def aggregate_row(run_rows: list[dict]) -> dict:
    """One table row from the runs of one configuration: the mean, and the sample std when there are several."""
    first = run_rows[0]
    row = {"model": first["model"], "name": group_name(run_rows), "n": len(run_rows), "params": first["params"]}
    for key in ("top1", "top5", "last_top1", "last_top5", "budget"):
        values = [run[key] for run in run_rows if run.get(key) is not None]
        row[key] = statistics.fmean(values) if values else None
        row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
    return {**row, "runs": run_rows}


def test_loader(data_name: str, image_size: int, cache: dict, config: Config, device):
    """One loaded dataset per (data, image size), shared by the rows that use it."""
    key = (data_name, image_size)
    if key not in cache:
        data = load_data(data_name, image_size)
        workers = default_workers(config.workers)
        cache[key] = (data, make_loader(data.test, config.batch_size, workers, device))
    return cache[key][1]


def format_accuracy(row: dict, key: str) -> str:
    """`85.06%`, or `85.06 ± 0.42% (n=3)` for a row of several seeds."""
    if row.get(key) is None:
        return "—"
    if row.get(f"{key}_std") is None:
        return f"{row[key]:.2f}%"
    return f"{row[key]:.2f} ± {row[f'{key}_std']:.2f}% (n={row['n']})"


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| Model | Test top-1 (best-val checkpoint) | Test top-5 | Test top-1 (last epoch) | Budget (epochs of all "
        "data) | Parameters | Run |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        accuracies = " | ".join(format_accuracy(row, key) for key in ("top1", "top5", "last_top1"))
        budget = f"{row['budget']:.2f}" if row.get("budget") is not None else "—"
        run = f"`{row['name']}`" if "name" in row else "—"
        lines.append(f"| {row['model']} | {accuracies} | {budget} | {row['params'] / 1e6:.2f}M | {run} |")
    return "\n".join(lines)


def test_rows(config: Config, runs: list[dict], data_cache: dict, placement: Placement) -> list[dict]:
    """The table's rows: the teacher (unless --no-teacher), then each group of runs (seeds of one configuration)."""
    rows = []
    if not config.no_teacher:
        first = runs[0] if runs else None
        data_name = config.data or first["config"]["data"]
        image_size = image_size_of(first) if first else None
        loader = test_loader(data_name, image_size, data_cache, config, placement.device)
        rows.append(teacher_row(config, first, data_cache[(data_name, image_size)][0], loader, placement))
    for group in group_runs(runs):
        rows.append(aggregate_row([student_row(run, data_cache, config, placement) for run in group]))
    return rows


def main(argv=None) -> None:
    config = parse_config(Config, argv, description=__doc__)
    if config.json:
        check_writable_file(config.json, "--json")
    if config.report:
        check_writable_folder(config.report, "--report")
    if config.batch_size < 1 or (config.workers or 0) < 0:
        raise UserError("--batch-size must be at least 1 and --workers >= 0.")
    runs = read_runs(config.runs)
    for run in runs if config.report else ():  # a cut-short metrics.csv is refused before the slow part
        if Path(run["name"]).is_dir() and not run.get("export"):  # an export keeps no metrics: no curves
            read_metrics(Path(run["name"]) / "metrics.csv")
    if not runs and (config.no_teacher or not config.data):
        raise UserError("nothing to evaluate; pass run folders, or --data with a teacher flag for the teacher alone.")
    device = pick_device(config.device)
    placement = Placement.on(device, amp_dtype(device, config.amp))  # the one precision and layout of every row
    data_cache = {}
    try:
        rows = test_rows(config, runs, data_cache, placement)
    finally:
        for _, loader in data_cache.values():  # the test loaders' workers end with the evaluation
            close_loader(loader)
    table = markdown_table(rows)
    print(table)
    if config.json:
        Path(config.json).parent.mkdir(parents=True, exist_ok=True)
        save_json(Path(config.json), rows)
    if config.report:
        print(f"report: {write_report(rows, table, config.report)}", file=sys.stderr)  # stdout: the table alone


if __name__ == "__main__":
    run_cli(main)
