"""The teacher and its logits: loading it (a sliced ImageNet model or a checkpoint of ours), and the one
`LogitSource` of a run that the epoch loop asks for a batch's teacher logits (docs/formulas.md: the KD loss and the
difficulty score that read them). Every source also serves the teacher's logits of the un-augmented training images
(for difficulty scores); the files that keep logits on disk are training/logit_stores.py's.

Which source a run uses is decided once, by `choose_source` from --teacher-logits:
online (the teacher runs on each augmented batch), cached (its logits of the un-augmented image), replay (online, but
each view's logits are stored by the first run that trains on it and read by later runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

import models
from common.errors import UserError
from common.files import MODEL_KEYS, load_checkpoint
from common.run_folder import is_main_process
from training.devices import Placement, sum_across_processes
from training.logit_stores import EpochViews, TeacherViewStore, cached_logits

LOGIT_SOURCES = ("online", "replay", "cached")  # --teacher-logits: where a batch's teacher logits come from


@dataclass(frozen=True)
class TeacherSpec:
    """Which teacher a run distils from and where its logits are kept: the --teacher flags."""

    name: str = "resnet152.tv_in1k"  # a timm ImageNet model, sliced to the data's classes
    checkpoint: str | None = None  # or a best.pt of ours
    weights: str | None = None  # local weights of `name` (no network)
    logits: str = "online"  # --teacher-logits, one of LOGIT_SOURCES
    cache_dir: str = "~/.cache/kd-curriculum"

    def identity(self) -> dict:
        """What determines the teacher's outputs, for the logit cache key."""
        if self.checkpoint:
            stat = Path(self.checkpoint).stat()
            path = str(Path(self.checkpoint).resolve())
            return {"checkpoint": path, "size": stat.st_size, "mtime": stat.st_mtime_ns}
        if self.weights:
            stat = Path(self.weights).stat()
            return {"model": self.name, "weights": str(Path(self.weights).resolve()), "size": stat.st_size}
        return {"model": self.name, "weights": "timm-pretrained"}


# ----------------------------------------------------------------------------------------------------------------------
# The teacher


def load_teacher(data, spec: TeacherSpec) -> torch.nn.Module:
    """The teacher, in eval mode (the one place that sets it): the checkpoint of ours `spec.checkpoint`, else the
    timm ImageNet model `spec.name` (weights from timm, or the local file `spec.weights`), sliced to the data's
    classes. A checkpoint trained on more classes than the data's (a superset) is sliced by WordNet id like
    ImageNet's. Its last layer runs in fp32 under --amp (models.Fp32Head): its logits are KD's targets and the
    difficulty scores' input."""
    checkpoint = spec.checkpoint
    if checkpoint:
        saved = load_checkpoint(checkpoint, MODEL_KEYS)
        try:
            teacher = models.model_from_checkpoint(saved)
        except RuntimeError as err:  # load_state_dict: the weights are of another architecture than the name
            raise UserError(
                f"the teacher checkpoint {checkpoint} names the model {saved['model']} but holds "
                f"weights of another one ({str(err).splitlines()[0]}); pass a best.pt written by train_student.py."
            ) from None
        if saved["class_names"] != data.class_names:
            where = f"the teacher checkpoint {checkpoint}"
            teacher = models.SlicedTeacher(teacher, models.class_indices(data.class_names, saved["class_names"], where))
    else:
        teacher = models.imagenet_teacher(spec.name, data.class_names, spec.weights)
    return models.with_fp32_head(teacher).eval().requires_grad_(False)


def body_dtype(placement: Placement) -> torch.dtype | None:
    """The dtype the teacher's body weights are stored in: bf16 under bf16 autocast (models.cast_body), else as
    loaded (fp16 autocast keeps fp32 weights: its range is too narrow for some weights)."""
    return torch.bfloat16 if placement.dtype == torch.bfloat16 else None


def place_teacher(teacher: torch.nn.Module, placement: Placement, image_size: int) -> torch.nn.Module:
    """The teacher on the run's device and layout, its body's weights in body_dtype."""
    teacher = placement.put(teacher)
    dtype = body_dtype(placement)
    return models.cast_body(teacher, dtype, image_size) if dtype else teacher


def compile_teacher(teacher: torch.nn.Module, compile_: bool, device: torch.device) -> torch.nn.Module:
    """Under --compile on a GPU the teacher is compiled too: with the logits online it is most of a step's work
    (ResNet-152's 11.6 GMACs an image against MobileNetV2's 0.9 forward and backward). Its fp32 head compiles into
    the same graph (tests/test_gpu_path.py), and the training batch's size is marked dynamic where the loop marks it.
    On a CPU it stays eager: inductor's C++ build of a second model costs minutes there and gains little."""
    return torch.compile(teacher) if compile_ and device.type == "cuda" else teacher


# ----------------------------------------------------------------------------------------------------------------------
# A run's source of teacher logits: chosen once, asked once per batch


class LogitSource:
    """Where a run's training steps get the teacher's logits of a batch. This base serves runs whose steps never read
    them (labels only): `batch` gives None. Every source also holds the teacher's logits of the un-augmented training
    images (`scoring_logits`: computed once and cached on disk under `parts`), which the difficulty scores read.

    `predict(model)` gives a model's logits on the un-augmented training images (loop.predict_logits)."""

    def __init__(self, spec: TeacherSpec, teacher, data, placement: Placement, predict):
        self.teacher, self.data, self.placement, self.predict = teacher, data, placement, predict
        self.cache_dir = spec.cache_dir
        dtype = placement.dtype
        self.parts = None if teacher is None else {
            "teacher": spec.identity(),
            "data": data.identity,
            "split": "train",
            "transform": f"eval/{data.image_size}",
            # bf16 heads before, fp32 body weights before: other logits
            "dtype": str(dtype) if dtype is None else f"{dtype}, fp32 head" + (
                f", {body_dtype(placement)} body weights" if body_dtype(placement) else ""),
        }  # fmt: skip
        self.shape = (len(data.score), len(data.class_names))
        self.scoring: torch.Tensor | None = None

    def scoring_logits(self) -> torch.Tensor:
        """The teacher's logits of the un-augmented training images, computed once and cached on disk."""
        if self.scoring is None:
            compute = lambda: self.predict(self.teacher)  # noqa: E731
            self.scoring, _ = cached_logits(self.cache_dir, self.parts, compute, self.shape, write=is_main_process())
        return self.scoring

    def start_epoch(self, epoch: int) -> None:
        """Before an epoch's first batch."""

    def batch(self, images: torch.Tensor, cpu_indices: torch.Tensor, indices: torch.Tensor) -> torch.Tensor | None:
        """The teacher's logits of a batch of augmented `images`, samples `indices` (on the CPU and on the device)."""
        return None

    def end_epoch(self) -> None:
        """After an epoch's last batch."""


class OnlineLogits(LogitSource):
    """The teacher runs on each augmented batch."""

    def batch(self, images, cpu_indices, indices):
        with torch.inference_mode(), self.placement.autocast():
            logits = self.teacher(images)
        return logits.clone()  # an inference tensor cannot enter the autograd graph


class CachedLogits(LogitSource):
    """The teacher's cached logits of the un-augmented image, kept on the device (fp16: 10 MB for mini-imagenet)."""

    table: torch.Tensor | None = None

    def start_epoch(self, epoch):
        if self.table is None:
            self.table = self.scoring_logits().to(self.placement.device, torch.float16)

    def batch(self, images, cpu_indices, indices):
        return self.table[indices].float()


class ReplayedLogits(OnlineLogits):
    """The stored logits of these very views (TeacherViewStore); the teacher runs only on a batch with a view not
    stored yet, whose logits are then stored after the epoch."""

    store: TeacherViewStore | None = None
    views: EpochViews | None = None

    def start_epoch(self, epoch):
        if self.store is None:
            parts = {**self.parts, "transform": repr(self.data.train.transform), "augment_seed": self.data.train.seed}
            shape = (len(self.data.train), len(self.data.class_names))
            self.store = TeacherViewStore(self.cache_dir, parts, shape, write=is_main_process())
        self.views = EpochViews(self.store, epoch, self.placement.device)

    def batch(self, images, cpu_indices, indices):
        logits = self.views.lookup(cpu_indices, indices)
        return logits if logits is not None else self.views.record(indices, super().batch(images, cpu_indices, indices))

    def end_epoch(self):
        self.views.save(reduce=sum_across_processes)


SOURCES = {"online": OnlineLogits, "cached": CachedLogits, "replay": ReplayedLogits}


def choose_source(spec: TeacherSpec, steps_read_logits: bool, teacher, data, placement: Placement,
                  predict) -> LogitSource:  # fmt: skip
    """The run's source, from --teacher-logits: the base source (no logits) when its training steps never read them
    (`steps_read_logits`), except with cached, whose table costs nothing per batch."""
    if teacher is None or (spec.logits != "cached" and not steps_read_logits):
        return LogitSource(spec, teacher, data, placement, predict)
    return SOURCES[spec.logits](spec, teacher, data, placement, predict)
