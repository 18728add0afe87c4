"""Where training runs: the device, mixed precision, several processes (torchrun, DDP) and the data loaders.

A leaf module: it imports nothing of the project, so the teacher, the epoch loop and the scripts can all use it.
"""

from __future__ import annotations

import atexit
import os
import shutil
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from common.errors import UserError
from common.signals import sigterm_from_parent_only

# ----------------------------------------------------------------------------------------------------------------------
# The device and its precision


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


@dataclass(frozen=True)
class Placement:
    """Where a run computes and in what precision and layout: built once (Experiment), then handed to whatever runs a
    model (the training step, evaluation, the teacher), which uses `with placement.autocast():` (as nanoGPT's ctx)."""

    device: torch.device
    dtype: torch.dtype | None = None  # autocast's; None: full precision
    memory_format: torch.memory_format = torch.contiguous_format

    @classmethod
    def on(cls, device: torch.device, dtype: torch.dtype | None = None, memory_format: str = "auto") -> Placement:
        """The placement of `device`, in its own layout unless `memory_format` names one (memory_format_for)."""
        return cls(device, dtype, memory_format_for(device, memory_format))

    def autocast(self):
        return autocast(self.device, self.dtype)

    def put(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module on the device, its weights in the run's layout."""
        return module.to(self.device, memory_format=self.memory_format)


MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def memory_format_for(device: torch.device, choice: str = "auto") -> torch.memory_format:
    """The layout of activations (and of the weights, to match): channels-last (NHWC) on GPUs, where convolutions
    use the tensor cores without transposes; contiguous (NCHW) on CPUs, unless `choice` forces one."""
    if choice == "auto":
        choice = "channels_last" if device.type == "cuda" else "contiguous"
    return torch.channels_last if choice == "channels_last" else torch.contiguous_format


def allow_tf32(allowed: bool) -> None:
    """TF32 (fp32 range, a 10-bit mantissa) for fp32 matmuls and convolutions on Ampere and later GPUs: several
    times the fp32 throughput, at about bf16-like input rounding with fp32 accumulation (--no-tf32: full fp32).
    Under --amp only the layers autocast leaves in fp32 are affected. No effect on CPUs."""
    torch.backends.cuda.matmul.allow_tf32 = allowed
    torch.backends.cudnn.allow_tf32 = allowed


def adam(params, device: torch.device, *, lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam, fused into one kernel per step on a GPU (no per-parameter launches, and GradScaler's inf check stays on
    the device instead of a host sync each step)."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=device.type == "cuda" or None)


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


def max_across_processes(value: int, device: torch.device) -> int:
    """The largest of every rank's `value` (a collective: every rank calls it), through `device` (NCCL's GPU)."""
    if not dist.is_initialized():
        return value
    carrier = torch.tensor([value], device=device)
    dist.all_reduce(carrier, op=dist.ReduceOp.MAX)
    return int(carrier.item())


def share_from_main(tensor: torch.Tensor | None, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """rank 0's CPU `tensor` on every rank (the others pass None): every rank then works on the same values. NCCL
    carries it through this rank's GPU."""
    if not dist.is_initialized():
        return tensor
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    carrier = tensor.to(device) if dist.get_rank() == 0 else torch.empty(shape, dtype=dtype, device=device)
    dist.broadcast(carrier, 0)
    return carrier.cpu()


def broadcast_from_main(value):
    """rank 0's value on every rank (the RL agent's action)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


MAX_DEFAULT_WORKERS = 16  # ~5 cores feed 3,000 training views/s (docs/data-path.md); more only cost memory
PREFETCH = 2  # DataLoader's prefetch_factor: batches each worker keeps ready in shared memory


def default_workers(requested: int | None = None) -> int:
    """--workers, or with none given its default: the cores this process may use (its CPU affinity, which a scheduler
    or a container sets), shared among torchrun's processes on the node, less one for the process itself, at most
    MAX_DEFAULT_WORKERS."""
    if requested is not None:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(MAX_DEFAULT_WORKERS, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")) - 1))


def check_shared_memory(batch_bytes: int, workers: int, folder: str = "/dev/shm") -> None:
    """Refuse loader workers whose batches cannot fit in shared memory (a container's 64 MB /dev/shm): workers pass
    batches through it, and running out kills a worker with a bus error in the middle of an epoch. The node's
    /dev/shm is shared by all of torchrun's local processes (LOCAL_WORLD_SIZE), each with its own workers: all of
    them must fit, not one (each rank alone would pass and all together fail)."""
    if workers == 0 or not os.path.isdir(folder):
        return
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    needed, free = ranks * (workers * PREFETCH + 1) * batch_bytes, shutil.disk_usage(folder).free
    if needed > free:
        on = f"{ranks} processes x {workers}" if ranks > 1 else f"{workers}"
        raise UserError(
            f"{folder} has {free / 2**20:.0f} MiB free, but {on} loader workers need about {needed / 2**20:.0f} "
            f"MiB of it ({PREFETCH} batches of {batch_bytes / 2**20:.0f} MiB each); give the container more shared "
            "memory (docker run --shm-size 8g) or lower --workers (0 uses none)."
        )


_OPEN_LOADERS: set[DataLoader] = set()  # loaders whose persistent workers may be running; close_loader takes them out


def make_loader(view, batch_size: int, workers: int, device: torch.device, sampler=None, persistent: bool = True):
    """Evaluation loaders take this process's strided shard of the view (all of it in a single process);
    predict_logits puts each output row back at its sample index. Training passes its own sampler.

    With `persistent` workers (a loader iterated every epoch) the workers live until `close_loader`, which whoever
    made the loader calls where its run ends (Experiment.close); otherwise they end with each pass over the loader."""
    if sampler is None and dist.is_initialized():
        view = Subset(view, range(dist.get_rank(), len(view), dist.get_world_size()))
    batching = {"batch_sampler": sampler} if sampler is not None else {"batch_size": batch_size}
    loader = DataLoader(
        view,
        **batching,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=persistent and workers > 0,
        worker_init_fn=sigterm_from_parent_only,  # a scheduler's SIGTERM stops the run after its epoch, not a worker
    )
    if loader.persistent_workers:
        _OPEN_LOADERS.add(loader)  # a strong reference: an open loader is never freed by the garbage collector
    return loader


def close_loader(loader: DataLoader) -> None:
    """Stop a loader's persistent workers the orderly way: each gets the stop sentinel and is joined. (Left to the
    garbage collector, a loader in a reference cycle can lose its queues' feeder threads before its iterator's own
    shutdown runs: the sentinels never arrive and the workers outlive it, as a finished RL run's proxy loaders did.)
    A closed loader can be iterated again: it starts new workers."""
    _OPEN_LOADERS.discard(loader)
    iterator = loader._iterator  # torch keeps a persistent loader's one iterator, and with it the workers, here
    if iterator is not None:
        iterator._shutdown_workers()
        loader._iterator = None


@atexit.register
def close_open_loaders() -> None:
    """The safety net at exit for a loader its owner did not close. It does not depend on the order of exit hooks:
    run before torch's own hook it stops the workers the orderly way; after it, torch's shutdown does nothing and
    multiprocessing's exit hook ends them with SIGTERM from their parent, the one SIGTERM they obey."""
    for loader in list(_OPEN_LOADERS):
        close_loader(loader)
