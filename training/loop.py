"""The epoch loop and evaluation: one epoch of KD steps, a model's logits over a view, accuracy.

What a step needs besides the model and the batch comes in as small objects: `StepSettings` (optimiser, loss weights,
placement), the run's `LogitSource` (training/teacher.py: where a batch's teacher logits come from) and the epoch's
plan (training/curriculum.py: what each sample's loss is weighted by, and what the steps hand back).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.utils.data import Subset
from tqdm import tqdm

import models
from common.errors import UserError
from common.run_folder import is_main_process
from data import views
from training.devices import Placement, max_across_processes, sum_across_processes

if TYPE_CHECKING:
    from training.curriculum import EpochPlan
    from training.teacher import LogitSource


class NonFiniteLoss(UserError):
    pass


@dataclass
class StepSettings:
    """What every training step of a run uses besides the model, the batch and the teacher's logits."""

    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    label_weight: float
    temperature: float
    placement: Placement
    dynamic_batch: bool = False  # a compiled model: its batch dimension marked dynamic (no recompile mid-epoch)


def train_one_epoch(
    model,
    loader,
    source: LogitSource,
    settings: StepSettings,
    plan: EpochPlan | None = None,
    *,
    epoch: int = 0,
    uneven: bool = False,
    loss_scales: list[float] | None = None,
) -> float:
    """One epoch of KD; the teacher's logits of each batch come from `source`. Returns the mean training loss (over
    all processes). The epoch's `plan` (None: every sample alike, nothing handed back) may carry `weights[index]`,
    which multiplies that sample's loss (a prioritised sampler's importance weights), `label_gate[index]`, which
    multiplies its label term alone (a label gate), `seen[index] += 1`, which counts what was trained, and
    `on_logits(indices, teacher_logits, student_logits)`, which sees every batch (train-pass scoring). Between the
    first batch and the last nothing waits for the device (no value read back, no tensor built from Python data;
    tests/test_gpu_path.py guards it): losses stay there and are checked for NaN once, after the epoch, and batch
    sizes are counted on the host. `uneven`: this epoch's ranks train different numbers of batches (DDP's join() is
    then needed, and paid for: it makes every step agree on which ranks still train). `loss_scales[step]` multiplies
    the step's loss before backward (EpochSampler.loss_scales: DDP's mean over ranks then is the global batch's mean).
    """
    place, optimizer, scaler = settings.placement, settings.optimizer, settings.scaler
    weights, label_gate = (plan.weights, plan.label_gate) if plan else (None, None)
    on_logits, seen = (plan.on_logits, plan.seen) if plan else (None, None)
    model.train()
    batch_losses = torch.zeros(len(loader), device=place.device)
    batch_sizes = []
    progress = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=progress_off())
    with join_uneven_inputs(model, uneven):  # DDP: a rank may get a batch less (every selected sample used once)
        for step, (images, labels, cpu_indices) in enumerate(progress):
            images = views.to_device(images, place.device, place.memory_format)  # uint8 views are normalised there
            if settings.dynamic_batch:  # batches differ by a sample (and by rank): one graph for every size
                torch._dynamo.maybe_mark_dynamic(images, 0)
            labels = labels.to(place.device, non_blocking=True)
            indices = cpu_indices.to(place.device, non_blocking=True)
            teacher_logits = source.batch(images, cpu_indices, indices)
            with place.autocast():
                student_logits = model(images)
            loss = models.kd_loss(
                student_logits, teacher_logits, labels, label_weight=settings.label_weight,
                temperature=settings.temperature, sample_weights=None if weights is None else weights[indices],
                label_gate=None if label_gate is None else label_gate[indices],
            )  # fmt: skip
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss if loss_scales is None else loss * loss_scales[step]).backward()
            scaler.step(optimizer)
            scaler.update()
            batch_losses[step] = loss.detach()
            batch_sizes.append(len(cpu_indices))
            if on_logits is not None:
                on_logits(indices, teacher_logits, student_logits.detach())
            if seen is not None:
                seen.index_add_(0, indices, torch.ones_like(indices))
    check_finite(batch_losses, epoch)
    sizes = torch.tensor(batch_sizes, dtype=torch.float32).to(place.device)
    totals = sum_across_processes(torch.stack([(batch_losses * sizes).sum(), sizes.sum()]))
    return (totals[0] / totals[1]).item()


def progress_off() -> bool | None:
    """One progress bar per run: rank 0's (None: tqdm's own rule, shown on a terminal); the other ranks draw none."""
    return None if is_main_process() else True


def join_uneven_inputs(model, uneven: bool):
    """DDP's join(), which lets a rank that ran out of batches shadow the others' collectives until all are done,
    found also under torch.compile's wrapper (`_orig_mod`), when the ranks' batch counts differ; else a no-op. Not
    always on: inside join() every forward first agrees across ranks which still train (a collective and, with
    broadcast buffers, a value read back: host waits at every step)."""
    inner = getattr(model, "_orig_mod", model)
    ddp = isinstance(inner, torch.nn.parallel.DistributedDataParallel)
    return inner.join() if ddp and uneven else nullcontext()


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
def predict_logits(model, loader, placement: Placement, desc: str) -> torch.Tensor:
    """Logits of every sample of the loader's view, as a CPU float32 tensor [N, K] in sample order. With several
    processes each predicts its shard and the rows are summed into place across processes; a rank whose shard is
    empty (fewer samples than ranks) adds zeros of the width the others found."""
    model.eval()
    view = base_view(loader.dataset)
    logits = None
    for images, _, indices in tqdm(loader, desc=desc, leave=False, disable=progress_off()):
        images = views.to_device(images, placement.device, placement.memory_format)
        with placement.autocast():
            batch = model(images).float()
        if logits is None:
            logits = torch.zeros(len(view), batch.shape[1], device=placement.device)
        logits[indices.to(placement.device, non_blocking=True)] = batch
    width = max_across_processes(0 if logits is None else logits.shape[1], placement.device)
    if logits is None:
        logits = torch.zeros(len(view), width, device=placement.device)
    return sum_across_processes(logits).cpu()


def accuracy(logits: torch.Tensor, labels: torch.Tensor, top: int = 1) -> float:
    """Top-k accuracy in percent."""
    top = min(top, logits.shape[1])
    hits = (logits.topk(top, dim=1).indices == labels[:, None]).any(dim=1)
    return 100.0 * hits.float().mean().item()


def evaluate(
    model, loader, placement: Placement, desc: str = "eval", teacher_logits=None, temperature: float = 4.0
) -> dict:
    """Top-1 and top-5 accuracy (percent) and cross-entropy of a model on an order-preserving loader; given the
    teacher's logits of the same samples, also `kd_loss`, the teacher's term of the KD loss (label-free)."""
    logits = predict_logits(model, loader, placement, desc)
    labels = torch.as_tensor(base_view(loader.dataset).labels)
    scores = {
        "acc1": accuracy(logits, labels, 1),
        "acc5": accuracy(logits, labels, 5),
        "loss": F.cross_entropy(logits, labels).item(),
    }
    if teacher_logits is not None:
        scores["kd_loss"] = models.kd_loss(logits, teacher_logits, labels, label_weight=0.0,
                                           temperature=temperature).item()  # fmt: skip
    return scores


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
