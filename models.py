"""Teacher and student construction (timm), the KD loss and the per-sample difficulty score.

The loss and difficulty functions are the contracts of docs/formulas.md; they take and return tensors only.
"""

from __future__ import annotations

import math
import pickle

import timm
import torch
import torch.nn.functional as F
from torch import nn

from common import hub
from common.errors import UserError

DIFFICULTY_WEIGHTS = {"conf": 0.3, "entropy": 0.3, "kl": 0.4}
KL_SCALE = 5.0  # D_kl = min(KL / 5, 1)
OFFLINE_TEACHER = "; offline, a teacher of yours (--teacher-checkpoint) or none (--label-weight 1) needs no download"


def create_model(
    name: str, num_classes: int, pretrained: bool = False, weights_file: str | None = None, flag: str = "--weights"
) -> nn.Module:
    """A timm model with a `num_classes` head; ImageNet weights from timm's hub or from a local file."""
    if not timm.is_model(name):
        raise UserError(f"timm has no model {name!r}; pick one of timm.list_models() (e.g. mobilenetv2_100).")
    overlay = {"file": str(weights_file)} if weights_file else None
    no_network = pretrained and not weights_file and hub.offline()  # checked once: offline, timm reads its cache
    try:
        return timm.create_model(
            name, pretrained=pretrained or bool(weights_file), num_classes=num_classes, pretrained_cfg_overlay=overlay
        )
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError) as err:
        if isinstance(err, pickle.UnpicklingError) or "weights_only" in str(err):  # timm: torch.load(weights_only=True)
            raise UserError(
                f"{weights_file} holds pickled objects, and unpickling a file can run code, so it was not read; pass "
                "the .safetensors file of the weights, or a .pt of tensors only (a state dict)."
            ) from None
        if weights_file:
            raise UserError(
                f"cannot load {weights_file} into {name} ({type(err).__name__}: {err}); "
                "pass a state dict of that model."
            ) from None
        why = (
            f"the weights of {name} are not in the local Hugging Face cache and the hub cannot be reached"
            if no_network
            else f"could not fetch the pretrained weights of {name} ({type(err).__name__})"
        )
        raise UserError(
            f"{why}; download them where there is network (hf download {hub_id(name)}) and pass the .safetensors "
            f"file with {flag} FILE{OFFLINE_TEACHER if flag == '--teacher-weights' else ''}."
        ) from None


def hub_id(name: str) -> str:
    """The Hugging Face repo timm fetches a model's default weights from (e.g. timm/resnet18.a1_in1k)."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:
        cfg = None
    return (cfg and cfg.hf_hub_id) or f"timm/{name}"


def class_indices(class_names: list[str], teacher_class_names: list[str], teacher: str) -> list[int]:
    """The teacher's output index of each of the dataset's WordNet ids (the columns a SlicedTeacher keeps).

    One mapping for every teacher wider than the data: an ImageNet-1k model (`teacher_class_names` from timm's
    ImageNet table) and a checkpoint trained on a superset of the classes (the synthetic pretrained teacher)."""
    index = {wnid: i for i, wnid in enumerate(teacher_class_names)}
    unknown = [name for name in class_names if name not in index]
    if unknown:
        raise UserError(
            f"classes {unknown[:5]} are not among the {len(teacher_class_names)} classes of {teacher}, so it cannot "
            "score them; train a teacher on this data (train_student.py) and pass --teacher-checkpoint."
        )
    return [index[name] for name in class_names]


def imagenet_class_indices(class_names: list[str]) -> list[int]:
    """ImageNet-1k output index of each WordNet id, through timm's ImageNet table."""
    from timm.data import ImageNetInfo

    return class_indices(class_names, ImageNetInfo().label_names(), "ImageNet-1k (not ImageNet-1k WordNet ids)")


class SlicedTeacher(nn.Module):
    """A classifier over more classes than the data's whose logits are reduced to the dataset's classes: an
    ImageNet-1k model's 1000 to mini-imagenet's 100, or a synthetic pretrained teacher's to the students' set."""

    def __init__(self, model: nn.Module, class_indices: list[int]):
        super().__init__()
        self.model = model
        self.register_buffer("class_indices", torch.tensor(class_indices, dtype=torch.long), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).index_select(1, self.class_indices)


class Fp32Head(nn.Module):
    """A timm classifier whose last layer (global pooling and classifier) runs in fp32 under autocast: its features
    come in the autocast dtype, its logits in full precision. bf16 logits would round KD's targets (7 mantissa bits,
    steps of 0.03 at logits near 8) before the softmax at T = 4, and make difficulty scores tie. In full fp32: TF32
    (on by default for the rest, `--tf32`) is off inside it, so the logit caches' key ("fp32 head") says true."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(images)
        with torch.autocast(images.device.type, enabled=False), full_fp32():
            return self.model.forward_head(features.float())


class full_fp32:  # noqa: N801  (a context manager, named as torch's own)
    """TF32 off for matmuls and convolutions inside the block, the previous setting back after it."""

    def __enter__(self):
        self.saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


def cast_body(teacher: nn.Module, dtype: torch.dtype, image_size: int) -> nn.Module:
    """The teacher's convolutions and linear layers that `forward_features` runs, stored in `dtype` (bf16 under
    --amp): autocast then stops re-casting fp32 weights on every call, and they take half the memory. What
    `forward_head` runs (pooling, any head convolution or norm, the classifier) stays fp32, as do the norms' affine
    parameters; the body's layers are found by running `forward_features` once on a blank image, so any timm model
    works, whatever its head holds."""
    head = teacher.model if isinstance(teacher, SlicedTeacher) else teacher
    body = head.model if isinstance(head, Fp32Head) else head
    used: list[nn.Module] = []
    hooks = [module.register_forward_hook(lambda module, *_: used.append(module)) for module in body.modules()]
    parameter = next(body.parameters())
    try:
        with torch.no_grad():
            body.forward_features(torch.zeros(1, 3, image_size, image_size, device=parameter.device))
    finally:
        for hook in hooks:
            hook.remove()
    for module in {id(module): module for module in used}.values():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.to(dtype)
    return teacher


def with_fp32_head(teacher: nn.Module) -> nn.Module:
    """The teacher with its timm model's last layer in fp32 (inside the slicing, if it is a SlicedTeacher)."""
    if isinstance(teacher, SlicedTeacher):
        teacher.model = Fp32Head(teacher.model)
        return teacher
    return Fp32Head(teacher)


def imagenet_teacher(name: str, class_names: list[str], weights_file: str | None = None) -> SlicedTeacher:
    indices = imagenet_class_indices(class_names)  # fail on unknown classes before fetching any weights
    model = create_model(name, 1000, pretrained=True, weights_file=weights_file, flag="--teacher-weights")
    return SlicedTeacher(model, indices)


def model_from_checkpoint(checkpoint: dict) -> nn.Module:
    """Rebuild a model saved by train_student.py from the checkpoint alone."""
    model = timm.create_model(checkpoint["model"], num_classes=len(checkpoint["class_names"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    label_weight: float,
    temperature: float,
    sample_weights: torch.Tensor | None = None,
    label_gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hinton et al. (2015) distillation loss, batch mean:
    `label_weight * CE(s, y) + (1 - label_weight) * T^2 * KL(softmax(t/T) || softmax(s/T))`.
    The T^2 keeps the soft term's gradient scale independent of T. With `sample_weights` (the importance weights of
    a prioritised sampler) each sample's loss is multiplied by its weight before the mean. With `label_gate` (a
    factor in [0, 1] per sample: a label gate, docs/curriculum.md) only the label term is multiplied by it, sample by
    sample, `label_weight * g_i * CE_i + (1 - label_weight) * T^2 * KL_i`: the teacher's term stays on every sample.
    """
    student_logits = student_logits.float()
    loss = label_weight * F.cross_entropy(student_logits, labels, reduction="none") if label_weight > 0 else 0.0
    if label_gate is not None:
        loss = loss * label_gate
    if label_weight < 1:
        log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
        log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
        kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(-1)
        loss = loss + (1 - label_weight) * temperature**2 * kl
    return (loss * sample_weights).mean() if sample_weights is not None else loss.mean()


def plogq(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """p * log q with 0 * log 0 = 0, so a one-hot teacher gives exact zeros instead of NaN."""
    return torch.where(p > 0, p * log_q, torch.zeros_like(p))


def difficulty_components(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three terms of the difficulty score, each in [0, 1] (docs/formulas.md):
    `conf = 1 - max p_t`, `entropy = H(p_t) / log K`, `kl = min(KL(p_t || p_s) / 5, 1)`.
    Everything comes from log-softmax in float64, so logits of +-1e4 stay finite and exact.
    """
    log_p_t = F.log_softmax(teacher_logits.double(), dim=-1)
    log_p_s = F.log_softmax(student_logits.double(), dim=-1)
    p_t = log_p_t.exp()
    classes = teacher_logits.shape[-1]
    entropy = -plogq(p_t, log_p_t).sum(-1)
    kl = (plogq(p_t, log_p_t) - plogq(p_t, log_p_s)).sum(-1)
    return {
        "conf": (1 - p_t.max(dim=-1).values).float(),
        "entropy": (entropy / math.log(classes)).clamp(0, 1).float(),
        "kl": (kl.clamp(min=0) / KL_SCALE).clamp(max=1).float(),
    }


def combine_difficulty(components: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(weight * components[name] for name, weight in DIFFICULTY_WEIGHTS.items())


def sample_difficulty(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """`D = 0.3 D_conf + 0.3 D_entropy + 0.4 D_kl` in [0, 1], one value per sample."""
    return combine_difficulty(difficulty_components(teacher_logits, student_logits))


LABEL_LOSSES = ("student", "teacher")  # each sample's CE against its training label: the reducible loss's two terms


def label_losses(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Each sample's cross-entropy against its training label (noisy under --label-noise), the student's and the
    teacher's: the two terms of the reducible loss."""
    logits = {"student": student_logits, "teacher": teacher_logits}
    return {name: F.cross_entropy(logits[name].double(), labels, reduction="none").float() for name in LABEL_LOSSES}
