"""What every script shares: config parsing, the run folder, checkpoints, the epoch loop and validation.

One place decides each of these; train_student.py, train_student_rl.py, the RL environment and evaluate.py call it.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import random
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

import curriculum_dataloader as curriculum
import models
from errors import UserError

RUN_FILES = ("config.json", "metrics.csv", "last.pt", "best.pt", "results.json", "tb")


# ----------------------------------------------------------------------------------------------------------------------
# Config


def build_parser(config_class, description: str = "", explicit_only: bool = False) -> argparse.ArgumentParser:
    """argparse from a config dataclass: one `--flag` per field, its help from the field's metadata.
    With `explicit_only` the parsed namespace holds only the flags actually given (for --resume checks)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    module = vars(sys.modules[config_class.__module__])
    for field in dataclasses.fields(config_class):
        flag = "--" + field.name.replace("_", "-")
        kind = field.type if isinstance(field.type, type) else eval(field.type, module)
        options = {"help": field.metadata.get("help", "")}
        options["default"] = argparse.SUPPRESS if explicit_only else field.default
        if "nargs" in field.metadata:  # a positional list, e.g. evaluate.py's run folders
            parser.add_argument(field.name, nargs=field.metadata["nargs"], help=options["help"])
            continue
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
            continue
        scalar = next((t for t in (int, float, str) if t is kind or t in getattr(kind, "__args__", ())), str)
        if "choices" in field.metadata:
            options["choices"] = field.metadata["choices"]
        parser.add_argument(flag, type=scalar, **options)
    return parser


def parse_config(config_class, argv=None, description: str = ""):
    return config_class(**vars(build_parser(config_class, description).parse_args(argv)))


def field(default, help: str, **metadata):
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def config_dict(config) -> dict:
    return dataclasses.asdict(config)


# ----------------------------------------------------------------------------------------------------------------------
# Devices and reproducibility


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for a GPU but torch sees none; use --device cpu.")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name} is not a torch device; use auto, cpu, cuda or cuda:N.") from None


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 where the hardware has it (no loss scaling needed), else fp16 with a GradScaler."""
    if not enabled:
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------------------------------
# Several processes (torchrun): DDP for the student, sharded evaluation, rank 0 writes


def init_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process; starts the process group when torchrun launched several.
    NCCL between GPUs (one per process, by LOCAL_RANK), gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return dist.get_rank(), world, device


def end_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def sum_across_processes(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def broadcast_from_main(value):
    """rank 0's value on every rank (the RL agent's action)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def make_loader(view, batch_size: int, workers: int, device: torch.device, sampler=None) -> DataLoader:
    """Evaluation loaders take this process's strided shard of the view (all of it in a single process);
    predict_logits puts each output row back at its sample index. Training passes its own sampler."""
    if sampler is None and dist.is_initialized():
        view = Subset(view, range(dist.get_rank(), len(view), dist.get_world_size()))
    batching = {"batch_sampler": sampler} if sampler is not None else {"batch_size": batch_size}
    return DataLoader(
        view,
        **batching,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Files: atomic writes, checkpoints, the run folder


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: a kill leaves the old file intact."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: Path, payload: dict) -> None:
    atomic_write(path, lambda handle: torch.save(payload, handle))


def save_json(path: Path, payload) -> None:
    atomic_write(path, lambda handle: handle.write((json.dumps(payload, indent=2) + "\n").encode()))


def load_checkpoint(path) -> dict:
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


def prepare_run_folder(out: str, overwrite: bool, dry_run: bool = False) -> Path:
    """A new run folder. An existing run is never touched unless the user asks with --overwrite; `dry_run` only
    checks, so a script can refuse before its slow set-up and clear the folder only once that set-up worked."""
    folder = Path(out)
    existing = [name for name in RUN_FILES if (folder / name).exists()]
    if existing and not overwrite:
        raise UserError(
            f"{folder} already holds a run ({', '.join(existing)}); pick another --out, --resume it, or --overwrite."
        )
    if dry_run:
        return folder
    for name in existing:
        target = folder / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# Flags that may differ on --resume: they change where and how fast a run computes, not what it computes.
RESUME_MAY_CHANGE = {"resume", "workers", "device", "cache_dir", "overwrite"}


def resume_config(config_class, argv, script: str):
    """The config of the run in `--resume FOLDER`, and its last.pt (None if no epoch finished before the kill).

    Flags given together with --resume must agree with the run's config, except RESUME_MAY_CHANGE."""
    given = vars(build_parser(config_class, explicit_only=True).parse_args(argv))
    folder = Path(given["resume"])
    if not (folder / "config.json").is_file():
        raise UserError(f"--resume {folder}: no config.json there; pass the run folder of an interrupted run.")
    saved = json.loads((folder / "config.json").read_text())
    if saved.get("script") != script:
        raise UserError(f"--resume {folder}: that run was made by {saved.get('script')}; resume it with that script.")
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
    if config.resume or not is_main_process():  # rank 0 alone writes
        return Path(config.out)
    folder = prepare_run_folder(config.out, config.overwrite)
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
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------------------------------------------------
# Teacher


def load_teacher(config, data) -> torch.nn.Module:
    """The teacher, in eval mode (the one place that sets it): a checkpoint of ours, or a sliced ImageNet model.
    A checkpoint trained on more classes than the data's (a superset) is sliced by WordNet id like ImageNet's."""
    if config.teacher_checkpoint:
        checkpoint = load_checkpoint(config.teacher_checkpoint)
        teacher = models.model_from_checkpoint(checkpoint)
        if checkpoint["class_names"] != data.class_names:
            where = f"the teacher checkpoint {config.teacher_checkpoint}"
            teacher = models.SlicedTeacher(
                teacher, models.class_indices(data.class_names, checkpoint["class_names"], where)
            )
    else:
        teacher = models.imagenet_teacher(config.teacher, data.class_names, config.teacher_weights)
    return teacher.eval().requires_grad_(False)


def teacher_identity(config) -> dict:
    """What determines the teacher's outputs, for the logit cache key."""
    if config.teacher_checkpoint:
        stat = Path(config.teacher_checkpoint).stat()
        return {
            "checkpoint": str(Path(config.teacher_checkpoint).resolve()),
            "size": stat.st_size,
            "mtime": stat.st_mtime_ns,
        }
    weights = config.teacher_weights
    if weights:
        stat = Path(weights).stat()
        return {"model": config.teacher, "weights": str(Path(weights).resolve()), "size": stat.st_size}
    return {"model": config.teacher, "weights": "timm-pretrained"}


# ----------------------------------------------------------------------------------------------------------------------
# The epoch loop and evaluation


class NonFiniteLoss(UserError):
    pass


def train_one_epoch(
    model,
    teacher,
    loader,
    optimizer,
    scaler,
    label_weight: float,
    temperature: float,
    device: torch.device,
    dtype: torch.dtype | None,
    epoch: int,
    teacher_table: torch.Tensor | None = None,
    on_logits=None,
    seen: torch.Tensor | None = None,
) -> float:
    """One epoch of KD. Returns the mean training loss (over all processes).

    Teacher logits come from the teacher on the same augmented batch (online) or from `teacher_table[index]`, the
    cached logits of the un-augmented image, kept on the device. `on_logits(indices, teacher_logits, student_logits)`
    sees every batch (train-pass scoring); `seen[index] += 1` counts what was trained. Nothing in the loop waits for
    the device: losses stay there and are checked for NaN once, after the epoch.
    """
    model.train()
    channels_last = device.type == "cuda"
    batch_losses = torch.zeros(len(loader), device=device)
    batch_sizes = torch.zeros(len(loader), device=device)
    join = model.join() if isinstance(model, torch.nn.parallel.DistributedDataParallel) else nullcontext()
    progress = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None)
    with join:  # DDP: ranks may get one batch more or less (every selected sample is used exactly once)
        for step, (images, labels, indices) in enumerate(progress):
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            indices = indices.to(device, non_blocking=True)
            teacher_logits = None
            if teacher_table is not None:
                teacher_logits = teacher_table[indices].float()
            elif label_weight < 1 or on_logits is not None:
                with torch.inference_mode(), autocast(device, dtype):
                    teacher_logits = teacher(images)
                teacher_logits = teacher_logits.clone()  # an inference tensor cannot enter the autograd graph
            with autocast(device, dtype):
                student_logits = model(images)
            loss = models.kd_loss(student_logits, teacher_logits, labels, label_weight, temperature)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            batch_losses[step] = loss.detach()
            batch_sizes[step] = len(labels)
            if on_logits is not None:
                on_logits(indices, teacher_logits, student_logits.detach())
            if seen is not None:
                seen.index_add_(0, indices, torch.ones_like(indices))
    check_finite(batch_losses, epoch)
    totals = sum_across_processes(torch.stack([(batch_losses * batch_sizes).sum(), batch_sizes.sum()]))
    return (totals[0] / totals[1]).item()


def check_finite(batch_losses: torch.Tensor, epoch: int) -> None:
    bad = (~torch.isfinite(batch_losses)).nonzero()
    if len(bad):
        batch = int(bad[0]) + 1
        raise NonFiniteLoss(
            f"the training loss became {batch_losses[batch - 1].item()} at epoch {epoch}, batch {batch}; "
            "last.pt and best.pt are kept from earlier epochs: lower --lr, or turn off --amp, and run again."
        )


def base_view(dataset):
    """The SampleView under any Subsets (a process's shard, a rescoring's stale samples)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


@torch.inference_mode()
def predict_logits(model, loader, device: torch.device, dtype: torch.dtype | None, desc: str) -> torch.Tensor:
    """Logits of every sample of the loader's view, as a CPU float32 tensor [N, K] in sample order. With several
    processes each predicts its shard and the rows are summed into place across processes."""
    model.eval()
    view = base_view(loader.dataset)
    logits = None
    for images, _, indices in tqdm(loader, desc=desc, leave=False, disable=None):
        images = images.to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, dtype):
            batch = model(images).float()
        if logits is None:
            logits = torch.zeros(len(view), batch.shape[1], device=device)
        logits[indices.to(device, non_blocking=True)] = batch
    return sum_across_processes(logits).cpu()


def accuracy(logits: torch.Tensor, labels: torch.Tensor, top: int = 1) -> float:
    """Top-k accuracy in percent."""
    top = min(top, logits.shape[1])
    hits = (logits.topk(top, dim=1).indices == labels[:, None]).any(dim=1)
    return 100.0 * hits.float().mean().item()


def evaluate(model, loader, device: torch.device, dtype: torch.dtype | None, desc: str = "eval") -> dict:
    """Top-1 and top-5 accuracy (percent) and cross-entropy of a model on an order-preserving loader."""
    logits = predict_logits(model, loader, device, dtype, desc)
    labels = torch.as_tensor(base_view(loader.dataset).labels)
    return {
        "acc1": accuracy(logits, labels, 1),
        "acc5": accuracy(logits, labels, 5),
        "loss": F.cross_entropy(logits, labels).item(),
    }


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------------------
# A training run: the part of a script that train_student.py, train_student_rl.py and the RL environment share


class Experiment:
    """What stays fixed across training runs of one config: device, data, loaders, the teacher and its logits."""

    def __init__(self, config):
        from data import load_data

        self.config = config
        self.rank, self.world, self.device = init_distributed(pick_device(config.device))
        self.dtype = amp_dtype(self.device, config.amp)
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest convolutions
        self.data = load_data(config.data, config.image_size, config.seed, config.min_scale)
        self.num_classes = len(self.data.class_names)
        needs_teacher = (
            config.label_weight < 1 or config.curriculum in curriculum.SCORED or config.teacher_logits == "cached"
        )
        self.teacher = (
            load_teacher(config, self.data).to(self.device, memory_format=self.memory_format) if needs_teacher else None
        )
        eval_batch = 2 * config.batch_size  # no activations kept for backward: twice the batch fits
        self.val_loader = make_loader(self.data.val, eval_batch, config.workers, self.device)
        self.test_loader = make_loader(self.data.test, eval_batch, config.workers, self.device)
        self.score_loader = make_loader(self.data.score, eval_batch, config.workers, self.device)
        self.sampler = curriculum.EpochSampler(
            len(self.data.train), config.seed, config.batch_size, self.rank, self.world
        )
        self.train_loader = make_loader(self.data.train, config.batch_size, config.workers, self.device, self.sampler)
        self._teacher_train_logits = self._teacher_table = None

    @property
    def memory_format(self) -> torch.memory_format:
        """Channels-last on GPUs: convolutions in NHWC use the tensor cores without transposes."""
        return torch.channels_last if self.device.type == "cuda" else torch.contiguous_format

    def teacher_table(self) -> torch.Tensor:
        """The cached teacher logits on the device, for --teacher-logits cached (fp16: 10 MB for mini-imagenet)."""
        if self._teacher_table is None:
            self._teacher_table = self.teacher_train_logits().to(self.device, torch.float16)
        return self._teacher_table

    def teacher_cache_parts(self) -> dict:
        """The cache key: teacher and weights, data, split, transform and image size, precision."""
        return {
            "teacher": teacher_identity(self.config),
            "data": self.data.identity,
            "split": "train",
            "transform": f"eval/{self.data.image_size}",
            "dtype": str(self.dtype),
        }

    def teacher_train_logits(self) -> torch.Tensor:
        """Teacher logits of the un-augmented training images, computed once and cached on disk."""
        if self._teacher_train_logits is None:
            compute = lambda: predict_logits(self.teacher, self.score_loader, self.device, self.dtype, "teacher logits")  # noqa: E731
            self._teacher_train_logits, _ = curriculum.cached_logits(
                self.config.cache_dir, self.teacher_cache_parts(), compute, write=is_main_process()
            )
        return self._teacher_train_logits


class TrainPassScores:
    """Difficulty of the samples a training epoch saw, from the logits its steps already computed (the online
    teacher's and the student's on the augmented batch): fresh scores at no extra forward pass."""

    def __init__(self, num_samples: int, device: torch.device):
        self.components = {name: torch.zeros(num_samples, device=device) for name in models.DIFFICULTY_WEIGHTS}
        self.trained = torch.zeros(num_samples, device=device)

    def record(self, indices: torch.Tensor, teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> None:
        for name, values in models.difficulty_components(teacher_logits, student_logits).items():
            self.components[name][indices] = values
        self.trained[indices] = 1.0

    def collect(self) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
        """(indices, components) of the samples trained on, gathered across processes (their shards are disjoint)."""
        trained = sum_across_processes(self.trained).cpu().numpy() > 0
        components = {name: sum_across_processes(values).cpu() for name, values in self.components.items()}
        indices = np.flatnonzero(trained)
        return indices, {name: values[indices] for name, values in components.items()}


class TrainingRun:
    """One training run of the student: model, optimiser, cosine schedule and curriculum state.

    `train_epoch(target)` runs one epoch (rescore when due, select, train, validate) and returns its metrics row;
    `end_epoch(row)` logs it and writes the checkpoints; `finish()` tests the best checkpoint.
    """

    def __init__(
        self, experiment: Experiment, folder: Path | None = None, seed: int | None = None, log: MetricsLog | None = None
    ):
        config = self.config = experiment.config
        self.experiment, self.folder = experiment, folder
        self.seed = config.seed if seed is None else seed
        self.temperature = config.temperature  # the RL agent may move it
        seed_everything(self.seed)
        self.student = models.create_model(
            config.student, experiment.num_classes, config.pretrained, config.student_weights, "--student-weights"
        ).to(experiment.device, memory_format=experiment.memory_format)
        self.model = self.student  # what the training step calls: DDP and/or torch.compile around the student
        if experiment.world > 1:
            device_ids = [experiment.device] if experiment.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.student, device_ids=device_ids)
        if config.compile:
            self.model = torch.compile(self.model)
        self.optimizer = torch.optim.Adam(self.student.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=config.epochs)
        self.scaler = torch.amp.GradScaler(experiment.device.type, enabled=experiment.dtype == torch.float16)
        self.curriculum = curriculum.Curriculum(
            config.curriculum,
            len(experiment.data.train),
            self.seed,
            config.fraction,
            config.pacing,
            config.start_fraction,
            max(1, round(config.pace_epochs * config.epochs)),
        )
        self.epoch, self.best_val_acc, self.best_epoch = 0, -1.0, 0
        self.log = log or (MetricsLog(folder) if folder else None)

    def rescore(self) -> None:
        """Difficulty from the cached teacher logits and the current student on the un-augmented images: of every
        training sample, or with --score-source train-pass only of those the last epoch did not train on."""
        exp, curriculum = self.experiment, self.curriculum
        stale = None
        if self.config.score_source == "train-pass" and curriculum.scores is not None:
            stale = np.flatnonzero(curriculum.trained_epoch != self.epoch)
            if len(stale) == 0:
                curriculum.scored_epoch = self.epoch
                return
        loader = exp.score_loader
        if stale is not None:
            loader = make_loader(Subset(exp.data.score, stale), loader.batch_size, self.config.workers, exp.device)
        student_logits = predict_logits(self.student, loader, exp.device, exp.dtype, "student logits")
        if stale is None:
            curriculum.update_scores(exp.teacher_train_logits(), student_logits, self.epoch)
        else:
            components = models.difficulty_components(exp.teacher_train_logits()[stale], student_logits[stale])
            curriculum.update_some(stale, components, self.epoch)
            curriculum.scored_epoch = self.epoch

    def scores_from_train_pass(self) -> bool:
        return self.config.score_source == "train-pass" and self.curriculum.needs_scores

    def scores_due(self) -> bool:
        """Scores are refreshed before the first epoch and then every rescore_every epochs."""
        curriculum = self.curriculum
        if not curriculum.needs_scores:
            return False
        return curriculum.scores is None or self.epoch - curriculum.scored_epoch >= self.config.rescore_every

    def train_epoch(self, target: float | None = None) -> dict:
        exp, config = self.experiment, self.config
        start = time.perf_counter()
        if self.scores_due():
            self.rescore()
        self.epoch += 1
        seed_everything(self.seed * 100_003 + self.epoch)  # dropout etc. depend on (seed, epoch) only: exact resume
        target = config.target if target is None else float(target)
        chosen = self.curriculum.select(self.epoch, target)
        exp.sampler.set_epoch(self.epoch, chosen)
        lr = self.optimizer.param_groups[0]["lr"]
        seen = torch.zeros(len(exp.data.train), dtype=torch.long, device=exp.device)
        train_pass = TrainPassScores(len(seen), exp.device) if self.scores_from_train_pass() else None
        train_loss = train_one_epoch(
            self.model, exp.teacher, exp.train_loader, self.optimizer, self.scaler,
            config.label_weight, self.temperature, exp.device, exp.dtype, self.epoch,
            exp.teacher_table() if config.teacher_logits == "cached" else None,
            train_pass.record if train_pass else None, seen,
        )  # fmt: skip
        self.curriculum.count_trained(sum_across_processes(seen).cpu().numpy(), chosen, self.epoch)
        if train_pass:
            self.curriculum.update_some(*train_pass.collect(), self.epoch)
        self.scheduler.step()
        if exp.world > 1:  # evaluate and save rank 0's BatchNorm statistics on every rank
            for buffer in self.student.buffers():
                dist.broadcast(buffer, 0)
        val = evaluate(self.student, exp.val_loader, exp.device, exp.dtype, "validate")
        uses_target = config.curriculum in curriculum.TARGETED
        return {
            "epoch": self.epoch,
            "train_loss": train_loss,
            "val_acc": val["acc1"],
            "val_acc5": val["acc5"],
            "val_loss": val["loss"],
            "lr": lr,
            **self.curriculum.epoch_stats(chosen, target if uses_target else None),
            "seconds": time.perf_counter() - start,
        }

    def model_payload(self) -> dict:
        """What rebuilds the model without the original flags (models.model_from_checkpoint)."""
        return {
            "model": self.config.student,
            "class_names": self.experiment.data.class_names,
            "state_dict": self.student.state_dict(),
            "image_size": self.experiment.data.image_size,
            "data": self.experiment.data.identity,
            "epoch": self.epoch,
            "config": config_dict(self.config),
        }

    def state_payload(self) -> dict:
        """model_payload plus everything an exact resume needs."""
        return {
            **self.model_payload(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch,
            "curriculum": self.curriculum.state_dict(),
            "teacher_cache": self.experiment.teacher_cache_parts() if self.experiment.teacher else None,
            "temperature": self.temperature,
            "rows_logged": self.log.count if self.log else 0,
        }

    def load_state(self, checkpoint: dict | None) -> None:
        """Continue from a last.pt (None: killed before the first epoch ended, start over in the same folder);
        refuse one whose data or teacher differ from this run's."""
        if checkpoint is None:
            if self.log:
                self.log.truncate(0)
            return
        if checkpoint["data"] != self.experiment.data.identity:
            raise UserError(
                f"the data of {self.folder} changed since the run started ({checkpoint['data']}); "
                "resume with the original data, or start a new run."
            )
        teacher = self.experiment.teacher_cache_parts() if self.experiment.teacher else None
        if checkpoint["teacher_cache"] != teacher:
            raise UserError(
                f"the teacher of {self.folder} changed since the run started; resume with the original one."
            )
        self.student.load_state_dict(checkpoint["state_dict"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.curriculum.load_state_dict(checkpoint["curriculum"])
        self.epoch, self.best_val_acc, self.best_epoch = (
            checkpoint["epoch"],
            checkpoint["best_val_acc"],
            checkpoint["best_epoch"],
        )
        self.temperature = checkpoint["temperature"]
        if self.log:
            self.log.truncate(checkpoint["rows_logged"])

    def end_epoch(self, row: dict, extra_state: dict | None = None) -> None:
        """Log the row, then write best.pt (if improved) and last.pt, in that order: a kill between them is repaired
        by resuming from last.pt, which redoes the epoch."""
        improved = row["val_acc"] > self.best_val_acc
        if improved:
            self.best_val_acc, self.best_epoch = row["val_acc"], self.epoch
        if not is_main_process():  # every rank keeps the same state; rank 0 alone prints and writes
            return
        print(
            f"epoch {self.epoch}/{self.config.epochs}  loss {row['train_loss']:.4f}  val {row['val_acc']:.2f}%"
            f"  lr {row['lr']:.2e}  samples {row['selected']}  {row['seconds']:.1f}s" + ("  *" if improved else ""),
            flush=True,
        )
        if self.folder is None:
            return
        self.log.append(row)
        if self.curriculum.scores is not None:
            atomic_write(self.folder / "difficulty.npy", lambda f: np.save(f, self.curriculum.scores))
            atomic_write(self.folder / "difficulty_history.npz", lambda f: np.savez(f, **self.curriculum.history))
        atomic_write(self.folder / "coverage.npy", lambda f: np.save(f, self.curriculum.coverage))
        if improved:
            save_checkpoint(self.folder / "best.pt", {**self.model_payload(), "val_acc": row["val_acc"]})
        save_checkpoint(self.folder / "last.pt", {**self.state_payload(), **(extra_state or {})})

    def finish(self) -> dict:
        """Test accuracy of the best-validation checkpoint (the reported figure) and of the last epoch's model."""
        exp = self.experiment
        last = evaluate(self.student, exp.test_loader, exp.device, exp.dtype, "test (last)")
        if dist.is_initialized():
            dist.barrier()  # rank 0 has written best.pt
        best_model = models.model_from_checkpoint(load_checkpoint(self.folder / "best.pt")).to(exp.device)
        best = evaluate(best_model, exp.test_loader, exp.device, exp.dtype, "test (best)")
        results = {
            "test_acc": best["acc1"],
            "test_acc5": best["acc5"],
            "best_epoch": self.best_epoch,
            "best_val_acc": self.best_val_acc,
            "last_epoch": self.epoch,
            "last_test_acc": last["acc1"],
            "last_test_acc5": last["acc5"],
            "params": count_parameters(self.student),
        }
        if is_main_process():
            save_json(self.folder / "results.json", results)
        if self.log:
            self.log.close()
        return results
