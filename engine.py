"""Training that every script shares: devices, several processes, the teacher, the epoch loop, validation and
`TrainingRun`. The run's records (config parsing, run folder, checkpoints, metrics log) live in bookkeeping.py.
"""

from __future__ import annotations

import math
import os
import random
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
import views
from bookkeeping import (
    MetricsLog,
    atomic_write,
    config_dict,
    is_main_process,
    load_checkpoint,
    save_checkpoint,
    save_json,
)
from errors import UserError

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


MAX_SEED = 2**32 - 1  # numpy's legacy seeding takes 32 bits
SEED_STRIDE = 100_003  # a prime above any step count: (seed, step) pairs never share a derived seed


def augment_seed(config) -> int:
    """The seed of the augmented views: --augment-seed, by default --seed."""
    return config.seed if config.augment_seed is None else config.augment_seed


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, step: int) -> int:
    """The seed of one epoch (or RL step) of a run: a function of (seed, step) alone, so a resumed run redraws what
    the uninterrupted one drew."""
    return seed * SEED_STRIDE + step


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
# Teacher


def load_teacher(config, data) -> torch.nn.Module:
    """The teacher, in eval mode (the one place that sets it): a checkpoint of ours, or a sliced ImageNet model.
    A checkpoint trained on more classes than the data's (a superset) is sliced by WordNet id like ImageNet's."""
    if config.teacher_checkpoint:
        checkpoint = load_checkpoint(config.teacher_checkpoint)
        try:
            teacher = models.model_from_checkpoint(checkpoint)
        except RuntimeError as err:  # load_state_dict: the weights are of another architecture than the name
            raise UserError(
                f"the teacher checkpoint {config.teacher_checkpoint} names the model {checkpoint['model']} but holds "
                f"weights of another one ({str(err).splitlines()[0]}); pass a best.pt written by train_student.py."
            ) from None
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
    *,
    label_weight: float,
    temperature: float,
    device: torch.device,
    dtype: torch.dtype | None,
    epoch: int,
    teacher_table: torch.Tensor | None = None,
    teacher_views: curriculum.EpochViews | None = None,
    on_logits=None,
    seen: torch.Tensor | None = None,
) -> float:
    """One epoch of KD. Returns the mean training loss (over all processes).

    Teacher logits come from the teacher on the same augmented batch (online), from `teacher_table[index]`, the
    cached logits of the un-augmented image, kept on the device, or from `teacher_views`, the stored logits of these
    very views (the teacher runs only on a batch with a view not stored yet, which is then recorded).
    `on_logits(indices, teacher_logits, student_logits)` sees every batch (train-pass scoring); `seen[index] += 1`
    counts what was trained. Nothing in the loop waits for the device: losses stay there and are checked for NaN
    once, after the epoch.
    """
    model.train()
    channels_last = device.type == "cuda"
    batch_losses = torch.zeros(len(loader), device=device)
    batch_sizes = torch.zeros(len(loader), device=device)
    join = model.join() if isinstance(model, torch.nn.parallel.DistributedDataParallel) else nullcontext()
    progress = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None)
    with join:  # DDP: ranks may get one batch more or less (every selected sample is used exactly once)
        for step, (images, labels, cpu_indices) in enumerate(progress):
            images = views.to_device(images, device)  # uint8 views are normalised (and augmented) there
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            indices = cpu_indices.to(device, non_blocking=True)
            teacher_logits = None
            if teacher_table is not None:
                teacher_logits = teacher_table[indices].float()
            elif label_weight < 1 or on_logits is not None:
                teacher_logits = teacher_views.lookup(cpu_indices, indices) if teacher_views else None
                if teacher_logits is None:
                    with torch.inference_mode(), autocast(device, dtype):
                        teacher_logits = teacher(images)
                    teacher_logits = teacher_logits.clone()  # an inference tensor cannot enter the autograd graph
                    if teacher_views:
                        teacher_logits = teacher_views.record(indices, teacher_logits)
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
        images = views.to_device(images, device)
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


def check_epoch_size(config, num_samples: int, world: int) -> None:
    """Refuse, before any training, an epoch whose smallest training batch would hold one sample (BatchNorm cannot
    train on it) or none: the smallest selection of the strategy, split over processes and batches as EpochSampler
    splits it."""
    if config.curriculum in ("easy_to_hard", "hard_to_easy"):
        flag, fraction = "--start-fraction", config.start_fraction  # the pacing's first, smallest epoch
    elif config.curriculum == "none":
        flag, fraction = "--data", 1.0
    else:
        flag, fraction = "--fraction", config.fraction
    count = round(fraction * num_samples)
    shard = count // world
    smallest_batch = shard // max(1, math.ceil(shard / config.batch_size))
    if smallest_batch < 2:
        raise UserError(
            f"{flag} selects {count} of {num_samples} training samples per epoch, which leaves a training batch of "
            f"{smallest_batch} sample(s) with --batch-size {config.batch_size} (BatchNorm needs 2); "
            f"raise {flag} or change --batch-size."
        )


class Experiment:
    """What stays fixed across training runs of one config: device, data, loaders, the teacher and its logits."""

    def __init__(self, config, data=None):
        """`data`: splits already loaded (the RL script's proxy runs train on a subset); default: load config.data."""
        from data import load_data

        self.config = config
        self.rank, self.world, self.device = init_distributed(pick_device(config.device))
        self.dtype = amp_dtype(self.device, config.amp)
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest convolutions
        if data is None:
            data = load_data(config.data, config.image_size, augment_seed(config), config.min_scale)
        self.data = views.fast_splits(data, config.loader, config.cache_dir, config.workers)
        self.num_classes = len(self.data.class_names)
        check_epoch_size(config, len(self.data.train), self.world)
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
        self._teacher_train_logits = self._teacher_table = self._view_store = None

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

    def teacher_views(self, epoch: int) -> curriculum.EpochViews:
        """The stored teacher logits of this epoch's augmented views, for --teacher-logits replay."""
        if self._view_store is None:
            parts = {
                **self.teacher_cache_parts(),
                "transform": repr(self.data.train.transform),
                "augment_seed": self.data.train.seed,
            }
            shape = (len(self.data.train), self.num_classes)
            self._view_store = curriculum.TeacherViewStore(self.config.cache_dir, parts, shape, write=is_main_process())
        return curriculum.EpochViews(self._view_store, epoch, self.device)

    def teacher_train_logits(self) -> torch.Tensor:
        """Teacher logits of the un-augmented training images, computed once and cached on disk."""
        if self._teacher_train_logits is None:
            compute = lambda: predict_logits(self.teacher, self.score_loader, self.device, self.dtype, "teacher logits")  # noqa: E731
            self._teacher_train_logits, _ = curriculum.cached_logits(
                self.config.cache_dir,
                self.teacher_cache_parts(),
                compute,
                shape=(len(self.data.score), self.num_classes),
                write=is_main_process(),
            )
        return self._teacher_train_logits


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
            fraction=config.fraction,
            pacing_kind=config.pacing,
            start_fraction=config.start_fraction,
            full_data_epoch=max(1, round(config.pace_epochs * config.epochs)),  # --pace-epochs is a fraction of them
            rescore_every=config.rescore_every,
            score_source=config.score_source,
            target_scale=config.target_scale,
        )
        self.epoch, self.best_val_acc, self.best_epoch = 0, -1.0, 0
        self.log = log or (MetricsLog(folder) if folder else None)

    def rescore(self) -> None:
        """The current student's logits on the un-augmented images the curriculum asks for (all, or with
        --score-source train-pass those the last epoch did not train on); the curriculum turns them into scores."""
        exp = self.experiment
        stale = self.curriculum.stale(self.epoch)
        student_logits = None
        if stale is None or len(stale):
            loader = exp.score_loader
            if stale is not None:
                loader = make_loader(Subset(exp.data.score, stale), loader.batch_size, self.config.workers, exp.device)
            student_logits = predict_logits(self.student, loader, exp.device, exp.dtype, "student logits")
        self.curriculum.rescore(self.epoch, exp.teacher_train_logits(), student_logits, stale)

    def train_steps(self, teacher_table=None, teacher_views=None, on_logits=None, seen=None) -> float:
        """One pass of training steps over the sampler's current selection (the trainer's and bench.py's one call of
        train_one_epoch). Returns the mean training loss."""
        exp = self.experiment
        return train_one_epoch(
            self.model,
            exp.teacher,
            exp.train_loader,
            self.optimizer,
            self.scaler,
            label_weight=self.config.label_weight,
            temperature=self.temperature,
            device=exp.device,
            dtype=exp.dtype,
            epoch=self.epoch,
            teacher_table=teacher_table,
            teacher_views=teacher_views,
            on_logits=on_logits,
            seen=seen,
        )

    def train_epoch(self, target: float | None = None) -> dict:
        exp, config = self.experiment, self.config
        start = time.perf_counter()
        if self.curriculum.due(self.epoch):
            self.rescore()
        self.epoch += 1
        seed_everything(epoch_seed(self.seed, self.epoch))  # dropout etc. depend on (seed, epoch) only: exact resume
        target = config.target if target is None else float(target)
        chosen = self.curriculum.select(self.epoch, target)
        exp.sampler.set_epoch(self.epoch, chosen)
        lr = self.optimizer.param_groups[0]["lr"]
        seen = torch.zeros(len(exp.data.train), dtype=torch.long, device=exp.device)
        train_pass = self.curriculum.train_pass_recorder(exp.device)
        replay = config.teacher_logits == "replay" and (config.label_weight < 1 or train_pass is not None)
        views = exp.teacher_views(self.epoch) if replay else None  # the steps need the teacher's logits: replay them
        train_loss = self.train_steps(
            teacher_table=exp.teacher_table() if config.teacher_logits == "cached" else None,
            teacher_views=views,
            on_logits=train_pass.record if train_pass else None,
            seen=seen,
        )
        if views:
            views.save(reduce=sum_across_processes)
        self.curriculum.count_trained(sum_across_processes(seen).cpu().numpy(), chosen, self.epoch)
        if train_pass:
            self.curriculum.end_train_pass(train_pass, self.epoch, reduce=sum_across_processes)
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
