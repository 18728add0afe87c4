"""What every script's training shares: the `Experiment` (what stays fixed across runs of one config: placement, data,
loaders, the teacher and its logits) and the `TrainingRun` (one student: model, optimiser, schedule, curriculum).

The epoch loop itself is training/loop.py; the teacher's logits come from training/teacher.py, the curriculum's state
from training/curriculum.py (its strategies from curriculum_dataloader.py), the run's records from common/.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Subset

import models
from common import seeds
from common.cli import config_dict
from common.errors import UserError
from common.files import append_to_zip, atomic_write, load_checkpoint, save_checkpoint, save_json
from common.metrics import MetricsLog
from common.run_folder import is_main_process
from curriculum_dataloader import EpochSampler, check_epoch_size, strategy_of
from data import views
from data.splits import load_data
from training.config import TrainConfig
from training.curriculum import Curriculum, EpochPlan
from training.devices import (
    Placement,
    adam,
    allow_tf32,
    amp_dtype,
    check_shared_memory,
    close_loader,
    default_workers,
    init_distributed,
    make_loader,
    pick_device,
    sum_across_processes,
)
from training.loop import StepSettings, base_view, count_parameters, evaluate, predict_logits, train_one_epoch
from training.teacher import choose_source, compile_teacher, load_teacher, place_teacher

HISTORY = "difficulty_history.npz"  # every score the curriculum used, by the epoch it was made after (fp16)


def check_global_batch(batch_size: int, world: int) -> None:
    """--batch-size is the global batch (the reference's batch 128 on any number of GPUs), split evenly over ranks."""
    if batch_size % world:
        raise UserError(
            f"--batch-size {batch_size} (the global batch) does not split evenly over {world} processes; use a "
            f"multiple of {world}, e.g. {batch_size - batch_size % world or world}."
        )


class Experiment:
    """What stays fixed across training runs of one config: placement, data, loaders, the teacher and its logits."""

    def __init__(self, config: TrainConfig, data=None):
        """`data`: splits already loaded (the RL script's proxy runs train on a subset); default: load config.data."""
        self.config, device = config, pick_device(config.device)
        self.workers = default_workers(config.workers)
        if data is None:
            data = load_data(config.data, config.image_size, config.view_seed, config.min_scale,
                             noise=config.label_noise_spec())  # fmt: skip
        # stores built before torchrun's processes start their process group: no rank waits for one in a collective
        self.data = views.fast_splits(data, config.loader, config.cache_dir, self.workers)
        self.rank, self.world, device = init_distributed(device)
        check_global_batch(config.batch_size, self.world)
        self.placement = Placement.on(device, amp_dtype(device, config.amp), config.memory_format)
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest convolutions
        allow_tf32(config.tf32)
        views.normalisation(device)  # made now, not in the first training step
        self.num_classes = len(self.data.class_names)
        check_epoch_size(strategy_of(config.curriculum_spec()), len(self.data.train), self.world, config.batch_size)
        self.teacher = self.val_teacher = None
        teacher_spec = config.teacher_spec()
        if config.needs_teacher:
            teacher = place_teacher(load_teacher(self.data, teacher_spec), self.placement, self.data.image_size)
            self.teacher = compile_teacher(teacher, config.compile, device)
        self.make_loaders()
        predict = lambda model: self.predict(model, self.score_loader, "teacher logits")  # noqa: E731
        self.source = choose_source(teacher_spec, config.steps_read_logits, self.teacher, self.data, self.placement,
                                    predict)  # fmt: skip

    @property
    def device(self) -> torch.device:
        return self.placement.device

    def make_loaders(self) -> None:
        batch, device = self.config.batch_size // self.world, self.device  # --batch-size is the global batch
        stored = isinstance(self.data.val, views.StoredView)  # then only the training loader has workers
        check_shared_memory((1 if stored else 2) * batch * views.image_bytes(self.data), self.workers)
        self.sampler = EpochSampler(len(self.data.train), self.config.seed, self.config.batch_size, self.rank,
                                    self.world)  # fmt: skip
        self.train_loader = make_loader(self.data.train, batch, self.workers, device, self.sampler)
        eval_batch = 2 * batch  # no activations kept for backward: twice the batch fits
        self.val_loader, self.test_loader, self.score_loader = (
            make_loader(view, eval_batch, self.evaluation_workers(view), device)
            for view in (self.data.val, self.data.test, self.data.score)
        )

    def evaluation_workers(self, view) -> int:
        """The training loader keeps its workers for the run; an evaluation loader of stored views has none: a
        stored batch is a memory copy, which a worker makes no faster than this process once its transfer through
        shared memory is paid (measured: docs/performance.md). Other views keep their workers between passes."""
        return 0 if isinstance(base_view(view), views.StoredView) else self.workers

    def train(self, model, plan: EpochPlan, settings: StepSettings) -> float:
        """One epoch of training steps on the plan's samples; the mean training loss."""
        self.sampler.set_epoch(plan.epoch, plan.indices)
        self.source.start_epoch(plan.epoch)
        loss = train_one_epoch(model, self.train_loader, self.source, settings, plan, epoch=plan.epoch,
                               uneven=self.sampler.uneven(), loss_scales=self.sampler.loss_scales())  # fmt: skip
        self.source.end_epoch()
        return loss

    def predict(self, model, loader, desc: str) -> torch.Tensor:
        return predict_logits(model, loader, self.placement, desc)

    def evaluate(self, model, loader, desc: str, teacher_logits=None, temperature: float = 4.0) -> dict:
        return evaluate(model, loader, self.placement, desc, teacher_logits, temperature)

    def val_teacher_logits(self) -> torch.Tensor | None:
        """The teacher's logits of the validation images (None without a teacher), computed once: the probe of the
        label-free `val_kd_loss` every epoch logs (rl_curriculum_env's twin reward may read it)."""
        if self.teacher is not None and self.val_teacher is None:
            self.val_teacher = self.predict(self.teacher, self.val_loader, "teacher val")
        return self.val_teacher

    def close(self) -> None:
        """Stop the loaders' worker processes: whoever made the experiment calls this where its runs end (a `with`
        block), so a finished script exits at once."""
        for loader in (self.train_loader, self.val_loader, self.test_loader, self.score_loader):
            close_loader(loader)

    def __enter__(self) -> Experiment:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
        seeds.seed_everything(self.seed)
        self.student = models.create_model(
            config.student, experiment.num_classes, config.pretrained, config.student_weights, "--student-weights"
        )
        self.student = experiment.placement.put(self.student)
        self.model = self.student  # what the training step calls: DDP and/or torch.compile around the student
        if experiment.world > 1:
            device_ids = [experiment.device] if experiment.device.type == "cuda" else None
            # no buffer broadcast before every forward (with join() a value read back each step): each rank's
            # BatchNorm statistics follow its own batches, and rank 0's are broadcast after the epoch (train_epoch)
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.student, device_ids=device_ids, broadcast_buffers=False
            )
        if config.compile:  # around DDP, so the compiled graphs break at DDP's gradient buckets (overlap)
            self.model = torch.compile(self.model)
        self.optimizer = adam(
            self.student.parameters(), experiment.device, lr=config.lr, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=config.epochs)
        self.scaler = torch.amp.GradScaler(experiment.device.type, enabled=experiment.placement.dtype == torch.float16)
        train, flipped = experiment.data.train, experiment.data.flipped
        self.curriculum = Curriculum(config.curriculum_spec(), len(train), self.seed, train.labels, flipped)
        self.epoch, self.best_val_acc, self.best_epoch = 0, -1.0, 0
        self.log = log or (MetricsLog(folder) if folder else None)
        self.history_written: set[str] | None = None  # the history's entries in difficulty_history.npz (None: none yet)

    def score_pass(self, stale: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The teacher's and the current student's logits on the un-augmented images the curriculum asks for (all of
        them when `stale` is None); the curriculum turns them into scores."""
        exp = self.experiment
        student_logits = None
        if stale is None or len(stale):
            loader = exp.score_loader
            if stale is not None:  # a one-off loader: its workers end with the pass
                stale_view = Subset(exp.data.score, stale)
                workers = exp.evaluation_workers(stale_view)
                loader = make_loader(stale_view, loader.batch_size, workers, exp.device, persistent=False)
            student_logits = exp.predict(self.student, loader, "student logits")
        return exp.source.scoring_logits(), student_logits

    def refresh_scores(self) -> None:
        """Rescore if the curriculum says its scores are due (the RL environment's first observation reads them)."""
        self.curriculum.refresh_scores(self.epoch, self.score_pass)

    def rescore(self) -> None:
        """Rescore now, due or not (bench.py times it)."""
        self.curriculum.rescore(self.epoch, self.score_pass)

    def step_settings(self) -> StepSettings:
        return StepSettings(self.optimizer, self.scaler, label_weight=self.config.label_weight,
                            temperature=self.temperature, placement=self.experiment.placement,
                            dynamic_batch=self.config.compile)  # fmt: skip

    def train_epoch(self, target: float | None = None, gate: str | None = None) -> dict:
        """One epoch: the curriculum's plan (it rescores first when due), the training steps, validation. `gate`:
        the epoch's label gate (default: the run's)."""
        exp = self.experiment
        start = time.perf_counter()
        target = self.config.target if target is None else float(target)
        plan = self.curriculum.plan_epoch(self.epoch + 1, target, self.score_pass, exp.device, gate)
        self.epoch += 1
        seeds.seed_everything(seeds.derive(self.seed, "epoch", epoch=self.epoch))  # dropout etc.: exact resume
        lr = self.optimizer.param_groups[0]["lr"]
        train_loss = exp.train(self.model, plan, self.step_settings())
        stats = self.curriculum.end_epoch(plan, reduce=sum_across_processes)
        self.scheduler.step()
        if exp.world > 1:  # evaluate and save rank 0's BatchNorm statistics on every rank
            for buffer in self.student.buffers():
                dist.broadcast(buffer, 0)
        val = exp.evaluate(self.student, exp.val_loader, "validate", exp.val_teacher_logits(), self.config.temperature)
        probe = {"val_kd_loss": val["kd_loss"]} if "kd_loss" in val else {}  # label-free: the teacher's term
        return {"epoch": self.epoch, "train_loss": train_loss, "val_acc": val["acc1"], "val_acc5": val["acc5"],
                "val_loss": val["loss"], **probe, "lr": lr, **stats,
                "seconds": time.perf_counter() - start}  # fmt: skip

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
            "teacher_cache": self.experiment.source.parts,
            "temperature": self.temperature,
            "rows_logged": self.log.count if self.log else 0,
            "world_size": self.experiment.world,
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
        if checkpoint["teacher_cache"] != self.experiment.source.parts:
            raise UserError(
                f"the teacher of {self.folder} changed since the run started; resume with the original one."
            )
        world = checkpoint.get("world_size", 1)
        if world != self.experiment.world:
            raise UserError(
                f"--resume {self.folder}: the run trained on {world} process(es), this launch has "
                f"{self.experiment.world}; resume it with torchrun --nproc_per_node {world} (each rank's BatchNorm "
                "statistics come from its part of the batch, so another count would change the run mid-way)."
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
        if self.folder and is_main_process():  # the checkpoint's history, whole: an append a kill tore is repaired
            final = self.final_history()
            atomic_write(self.folder / HISTORY, lambda f: np.savez(f, **final))
            self.history_written = set(final)

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
            self.append_history(self.final_history())
        atomic_write(self.folder / "coverage.npy", lambda f: np.save(f, self.curriculum.coverage))
        if improved:
            save_checkpoint(self.folder / "best.pt", {**self.model_payload(), "val_acc": row["val_acc"]})
        save_checkpoint(self.folder / "last.pt", {**self.state_payload(), **(extra_state or {})})

    def final_history(self) -> dict[str, np.ndarray]:
        """The score history's entries that no longer change: all but the newest (train-pass scores and the next
        epoch's pass over the unselected samples still refresh it)."""
        keys = sorted(self.curriculum.history, key=lambda key: int(key.removeprefix("epoch_")))
        return {key: self.curriculum.history[key] for key in keys[:-1]}

    def append_history(self, history: dict[str, np.ndarray]) -> None:
        """Write the entries not yet in difficulty_history.npz: the run's first write makes the file afresh (an RL
        episode's proxy run replaces the last episode's), later ones append to it, so each epoch writes its own
        entry, not the whole history again (last.pt holds it whole, for an exact resume)."""
        if self.history_written is None:
            atomic_write(self.folder / HISTORY, lambda f: np.savez(f, **history))
            self.history_written = set(history)
            return
        new = {key: value for key, value in history.items() if key not in self.history_written}
        if new:
            append_to_zip(self.folder / HISTORY,
                          {f"{key}.npy": functools.partial(np.lib.format.write_array, array=value, allow_pickle=False)
                           for key, value in new.items()})  # fmt: skip
            self.history_written |= new.keys()

    def finish(self) -> dict:
        """Test accuracy of the best-validation checkpoint (the reported figure) and of the last epoch's model."""
        exp = self.experiment
        last = exp.evaluate(self.student, exp.test_loader, "test (last)")
        if dist.is_initialized():
            dist.barrier()  # rank 0 has written best.pt
        best_model = models.model_from_checkpoint(load_checkpoint(self.folder / "best.pt"))
        best = exp.evaluate(exp.placement.put(best_model), exp.test_loader, "test (best)")
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
            if self.curriculum.history:
                self.append_history(self.curriculum.history)  # the newest entry too: the run is over
            save_json(self.folder / "results.json", results)
        if self.log:
            self.log.close()
        return results
