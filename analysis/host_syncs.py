"""Counting the places where the host would wait for the device inside a step loop (docs/performance.md).

"Inside the loop" is from the moment a DataLoader yields an epoch's first batch until it is exhausted, less the time
the loader spends fetching a batch (its own host work): the training steps and the evaluation passes, not the
after-epoch reduction. On a GPU torch reports each wait itself: `torch.cuda.set_sync_debug_mode("warn")`, switched
on only inside the loop, warns at every synchronising CUDA call, and the warnings are counted. On a CPU nothing
waits, so the entry points that would wait on a GPU are patched, and their calls from any caller are counted: the
project's files and torch's own (DDP's `_find_common_rank` under `join()` or with `broadcast_buffers`), less the
few callers of ALLOWED, which do not wait on a GPU, and the tests' own probes. The entry points:
- a device tensor read back: item, tolist, numpy, cpu, its truth value, int, float, index, format, repr, nonzero,
  a boolean-mask index;
- a tensor made from host data on the device: torch.tensor / torch.as_tensor with a device, `.to(device)` of
  anything but the loader's batch, or of the batch without non_blocking (a GPU run takes it from pinned memory);
- a Python number, list or array written into a device tensor (`t[i] = 1.0`).
On a CPU every tensor lives on the one device, so the batch the loader yields is told apart by identity: its tensors
are the host's (and `.to(device)` of them a new object), every other tensor stands for a device tensor.
Each place reads "file:line function: what", and for a caller inside torch also the project line it came from.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

PROJECT = Path(__file__).resolve().parents[1]  # the repository: its scripts and folders
READS = ("item", "tolist", "numpy", "cpu", "nonzero", "__bool__", "__int__", "__float__", "__index__", "__format__",
         "__repr__")  # fmt: skip
HOST_VALUES = (int, float, bool, list, tuple, np.ndarray)


# Callers inside torch whose reads do not wait on a GPU: (file under site-packages, function or None for any) -> why.
ALLOWED = {
    ("torch/_subclasses/fake_tensor.py", None): "torch.compile's tracing (first step, and a recompile) runs on fake "
    "tensors: shapes only, no data on any device",
    ("torch/_meta_registrations.py", None): "the same tracing's shape functions",
    ("torch/optim/adam.py", "_init_group"): "the unfused Adam's step count, made at the first step with "
    "device='cpu' (a CPU tensor on a GPU too; the fused Adam a GPU runs makes it on the device from no host data)",
    ("torch/optim/optimizer.py", "_get_value"): "that step count read back: a CPU tensor, no wait (on a GPU the "
    "fused Adam of training/devices.py reads nothing)",
}


def in_project(filename: str) -> bool:
    """A file of the project itself: not torch, not a test, not this counter."""
    path = Path(filename).resolve()
    return (
        not filename.startswith("<")  # <frozen runpy>, <string>: not a file
        and path.is_relative_to(PROJECT)
        and path != Path(__file__).resolve()
        and not {"tests", ".venv", "site-packages"} & set(path.relative_to(PROJECT).parts)
    )


def short_path(filename: str) -> str:
    """A project file relative to the repository, a library's relative to site-packages (`torch/...`)."""
    path = Path(filename).resolve()
    if "site-packages" in path.parts:
        return "/".join(path.parts[len(path.parts) - path.parts[::-1].index("site-packages") :])
    if path.is_relative_to(PROJECT):
        return os.path.relpath(path, PROJECT)
    return str(path)


def is_probe(filename: str) -> bool:
    """A test's own code (or this counter): what it reads to check the counter is not the step loop's."""
    path = Path(filename).resolve()
    return path == Path(__file__).resolve() or (
        path.is_relative_to(PROJECT) and "tests" in path.relative_to(PROJECT).parts
    )


def tensors_in(batch) -> list[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, (list, tuple)):
        return [tensor for item in batch for tensor in tensors_in(item)]
    if isinstance(batch, dict):
        return [tensor for item in batch.values() for tensor in tensors_in(item)]
    return []


def moves_to_device(args, kwargs) -> bool:
    """Whether `Tensor.to(*args, **kwargs)` names a device (not only a dtype)."""
    return "device" in kwargs or any(isinstance(arg, (torch.device, str, torch.Tensor)) for arg in args)


def has_mask(index) -> bool:
    index = index if isinstance(index, tuple) else (index,)
    return any(isinstance(part, torch.Tensor) and part.dtype == torch.bool for part in index)


class HostSyncCounter:
    """`with HostSyncCounter(device) as counter:` ... `counter.count`, and `counter.places` ("file:line what")."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.places: list[str] = []
        self.armed = False
        self.host: dict[int, torch.Tensor] = {}  # id -> the loader's batch tensors of this loop (kept: ids stay unique)
        self.saved: list[tuple[object, str, object | None]] = []  # (owner, name, its own attribute or None)

    @property
    def count(self) -> int:
        return len(self.places)

    def __enter__(self) -> HostSyncCounter:
        self.patch(DataLoader, "__iter__", self.watched_iter)
        if self.device.type == "cuda":
            self.caught = warnings.catch_warnings(record=True)
            self.records = self.caught.__enter__()
            warnings.simplefilter("always")
            return self
        for name in READS:
            self.patch(torch.Tensor, name, self.counted(name))
        self.patch(torch.Tensor, "to", self.counted_to)
        self.patch(torch.Tensor, "__setitem__", self.counted_setitem)
        self.patch(torch.Tensor, "__getitem__", self.counted_getitem)
        self.patch(torch, "nonzero", self.counted("torch.nonzero", method=False))
        for name in ("tensor", "as_tensor"):
            self.patch(torch, name, self.counted_constructor(name))
        return self

    def __exit__(self, *exc) -> None:
        self.arm(False)
        for owner, name, own in reversed(self.saved):
            if own is None:
                delattr(owner, name)
            else:
                setattr(owner, name, own)
        if self.device.type == "cuda":
            self.caught.__exit__(*exc)
            self.places += [f"{w.filename}:{w.lineno} {w.message}" for w in self.records if is_sync_warning(w)]

    def patch(self, owner, name: str, make) -> None:
        """Replace `owner.name` by `make(original)`; `__exit__` puts back what was there (an inherited method is
        inherited again)."""
        original = getattr(owner, name)
        self.saved.append((owner, name, vars(owner).get(name)))
        setattr(owner, name, make(original))

    def arm(self, armed: bool) -> None:
        if armed != self.armed and self.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn" if armed else "default")
        self.armed = armed

    def watched_iter(self, original):
        counter = self

        def iterate(loader):
            iterator = original(loader)

            def batches():
                try:
                    while True:
                        counter.arm(False)  # fetching a batch is the loader's host work
                        try:
                            batch = next(iterator)
                        except StopIteration:
                            return
                        counter.host.update((id(tensor), tensor) for tensor in tensors_in(batch))
                        counter.arm(True)
                        yield batch
                finally:
                    counter.arm(False)
                    counter.host.clear()

            return batches()

        return iterate

    def device_tensor(self, tensor) -> bool:
        return self.armed and id(tensor) not in self.host

    def record(self, what: str) -> None:
        """Count a call by its caller (the frame past the patched wrapper), unless that caller is a test's probe or
        one of ALLOWED; a caller inside torch is shown with the project line that led to it."""
        frame = sys._getframe(2)
        while frame.f_code.co_filename == __file__:  # a patched entry point called by another (to inside cpu)
            frame = frame.f_back
        filename, function = frame.f_code.co_filename, frame.f_code.co_name
        if is_probe(filename) or {(short_path(filename), function), (short_path(filename), None)} & ALLOWED.keys():
            return
        place = f"{short_path(filename)}:{frame.f_lineno} {function}: {what}"
        if not in_project(filename):
            outer = frame.f_back
            while outer is not None and not in_project(outer.f_code.co_filename):
                outer = outer.f_back
            if outer is not None:
                place += f" (from {short_path(outer.f_code.co_filename)}:{outer.f_lineno})"
        self.places.append(place)

    def counted(self, name: str, method: bool = True):
        def make(original):
            def call(*args, **kwargs):
                if self.armed and (not method or self.device_tensor(args[0])):
                    self.record(name)
                return original(*args, **kwargs)

            return call

        return make

    def counted_to(self, original):
        def to(tensor, *args, **kwargs):
            result = original(tensor, *args, **kwargs)
            if not (self.armed and moves_to_device(args, kwargs)):
                return result
            if id(tensor) not in self.host:
                self.record(".to(device) of a tensor that is not the loader's batch")
            elif not kwargs.get("non_blocking"):
                self.record(".to(device) of the loader's batch without non_blocking")
            return result.view_as(result) if result is tensor else result  # the device copy is another tensor

        return to

    def counted_setitem(self, original):
        def setitem(tensor, index, value):
            if self.device_tensor(tensor) and isinstance(value, HOST_VALUES):
                self.record(f"a host {type(value).__name__} written into a device tensor")
            elif self.device_tensor(tensor) and has_mask(index):
                self.record("a boolean-mask index")
            return original(tensor, index, value)

        return setitem

    def counted_getitem(self, original):
        def getitem(tensor, index):
            if self.device_tensor(tensor) and has_mask(index):
                self.record("a boolean-mask index")
            return original(tensor, index)

        return getitem

    def counted_constructor(self, name: str):
        def make(original):
            def construct(*args, **kwargs):
                device = kwargs.get("device", args[2] if name == "as_tensor" and len(args) > 2 else None)
                if self.armed and device is not None:
                    self.record(f"torch.{name} from host data on the device")
                return original(*args, **kwargs)

            return construct

        return make


def is_sync_warning(warning) -> bool:
    return "synchroniz" in str(warning.message)
