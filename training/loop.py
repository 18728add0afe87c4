"""TODO docstring."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import Subset
from tqdm import tqdm

import models
from common.errors import UserError
from data import views
from training.devices import (
    autocast,
    memory_format_for,
    sum_across_processes,
)
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
    device: torch.device
    dtype: torch.dtype | None = None  # autocast's, None: full precision
    memory_format: torch.memory_format = torch.contiguous_format



def train_one_epoch(
    model, loader, source: LogitSource, settings: StepSettings, *, epoch=0, on_logits=None, seen=None, weights=None,
    label_gate=None,
) -> float:  # fmt: skip
    """One epoch of KD; the teacher's logits of each batch come from `source`. Returns the mean training loss (over
    all processes). `on_logits(indices, teacher_logits, student_logits)` sees every batch (train-pass scoring);
    `seen[index] += 1` counts what was trained; `weights[index]` multiplies that sample's loss (a prioritised
    sampler's importance weights); `label_gate[index]` multiplies its label term alone (a label gate). Between the
    first batch and the last nothing waits for the device (no value read back, no tensor built from Python data;
    tests/test_gpu_path.py guards it): losses stay there and are checked for NaN once, after the epoch, and batch
    sizes are counted on the host.
    """
    device, optimizer, scaler = settings.device, settings.optimizer, settings.scaler
    model.train()
    batch_losses = torch.zeros(len(loader), device=device)
    batch_sizes = []
    progress = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None)
    with join_uneven_inputs(model):  # DDP: ranks may get one batch more or less (every selected sample used once)
        for step, (images, labels, cpu_indices) in enumerate(progress):
            images = views.to_device(images, device, settings.memory_format)  # uint8 views are normalised there
            labels = labels.to(device, non_blocking=True)
            indices = cpu_indices.to(device, non_blocking=True)
            teacher_logits = source.batch(images, cpu_indices, indices)
            with autocast(device, settings.dtype):
                student_logits = model(images)
            loss = models.kd_loss(
                student_logits, teacher_logits, labels, label_weight=settings.label_weight,
                temperature=settings.temperature, sample_weights=None if weights is None else weights[indices],
                label_gate=None if label_gate is None else label_gate[indices],
            )  # fmt: skip
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            batch_losses[step] = loss.detach()
            batch_sizes.append(len(cpu_indices))
            if on_logits is not None:
                on_logits(indices, teacher_logits, student_logits.detach())
            if seen is not None:
                seen.index_add_(0, indices, torch.ones_like(indices))
    check_finite(batch_losses, epoch)
    sizes = torch.tensor(batch_sizes, dtype=torch.float32).to(device)
    totals = sum_across_processes(torch.stack([(batch_losses * sizes).sum(), sizes.sum()]))
    return (totals[0] / totals[1]).item()



def join_uneven_inputs(model):
    """DDP's join(), which lets a rank that ran out of batches shadow the others' collectives until all are done,
    found also under torch.compile's wrapper (`_orig_mod`); a no-op for a model of one process."""
    inner = getattr(model, "_orig_mod", model)
    return inner.join() if isinstance(inner, torch.nn.parallel.DistributedDataParallel) else nullcontext()



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
def predict_logits(model, loader, device: torch.device, dtype: torch.dtype | None, desc: str, memory_format=None):
    """Logits of every sample of the loader's view, as a CPU float32 tensor [N, K] in sample order. With several
    processes each predicts its shard and the rows are summed into place across processes. `memory_format`: the
    batches' layout (default: the device's, devices.memory_format_for)."""
    model.eval()
    memory_format = memory_format or memory_format_for(device)
    view = base_view(loader.dataset)
    logits = None
    for images, _, indices in tqdm(loader, desc=desc, leave=False, disable=None):
        images = views.to_device(images, device, memory_format)
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



def evaluate(
    model, loader, device: torch.device, dtype: torch.dtype | None, desc: str = "eval", memory_format=None,
    teacher_logits=None, temperature: float = 4.0,
) -> dict:  # fmt: skip
    """Top-1 and top-5 accuracy (percent) and cross-entropy of a model on an order-preserving loader; given the
    teacher's logits of the same samples, also `kd_loss`, the teacher's term of the KD loss (label-free)."""
    logits = predict_logits(model, loader, device, dtype, desc, memory_format)
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
