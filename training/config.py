"""The settings of a training run: every flag of train_student.py (`TrainConfig`, one help line per field; the
defaults reproduce the reference's KD row), the checks of their values, and what is derived from them once (the
strategy, whether the teacher is needed, the narrow settings the teacher and the curriculum take)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import timm

from common import seeds
from common.cli import field
from common.errors import UserError
from common.files import check_writable_folder
from common.seeds import MAX_SEED
from curriculum_dataloader import (
    LABEL_GATES,
    PACINGS,
    SCORE_SOURCES,
    STRATEGIES,
    TARGET_SCALES,
    TEACHER_GATES,
    CurriculumSpec,
    Strategy,
)
from data.splits import NOISE_KINDS, LabelNoise
from data.views import LOADERS
from training.devices import MEMORY_FORMATS
from training.teacher import LOGIT_SOURCES, TeacherSpec


@dataclass
class TrainConfig:
    data: str = field(
        "timm/mini-imagenet", "hub dataset, local folder (ImageFolder or parquet), or synthetic[:options]", group="data"
    )
    image_size: int | None = field(None, "input size; default 224 for real data, the synthetic set's own size")
    min_scale: float | None = field(None, "RandomResizedCrop minimum area; default 0.08 (real data), 0.5 (synthetic)")
    label_noise: float = field(
        0.0, "fraction of the training labels replaced by another class (chosen from --seed; the test labels stay "
        "clean)"
    )  # fmt: skip
    label_noise_kind: str = field(
        "symmetric", "symmetric: the replaced labels drawn uniformly, each a uniform other class; confusable "
        "(synthetic data): ambiguous images more often, each labelled as the class it resembles", choices=NOISE_KINDS
    )  # fmt: skip
    val_label_noise: float | None = field(
        None, "fraction of the validation labels replaced, by the same process (default: --label-noise, as a user "
        "with noisy labels has a noisy validation split; 0: clean validation labels, a control)"
    )  # fmt: skip
    workers: int | None = field(
        None, "DataLoader worker processes; default: the cores this process may use, shared among torchrun's "
        "processes on the node, less one, at most 16"
    )  # fmt: skip
    loader: str = field(
        "auto", "uint8: fixed views decoded once into a store in --cache-dir, training views finished on the device "
        "(docs/data-path.md); pil: every view decoded and augmented in the workers; auto: uint8 for JPEG data",
        choices=LOADERS,
    )  # fmt: skip
    student: str = field("mobilenetv2_100", "timm name of the trained model", group="models")
    pretrained: bool = field(False, "start the trained model from ImageNet weights (how a teacher is fine-tuned)")
    student_weights: str | None = field(None, "local ImageNet weights file for --pretrained (no network)")
    teacher: str = field("resnet152.tv_in1k", "timm name of the ImageNet teacher; its 1000 logits are sliced")
    teacher_checkpoint: str | None = field(None, "a best.pt of train_student.py to use as the teacher instead")
    teacher_weights: str | None = field(None, "local weights file of --teacher (no network)")
    label_weight: float = field(
        0.6,
        "weight of the label CE; 1 - it on the teacher's KL (1 = labels only, no teacher)",
        group="loss and optimisation",
    )
    label_gate: str = field(
        "all", "which samples keep the label term (the teacher's term stays on all): all; none; top1/top2/top3, "
        "labels among the teacher's K most likely classes; prob, weighted by the teacher's p(label); oracle, exactly "
        "the labels --label-noise left alone (docs/curriculum.md)", choices=LABEL_GATES,
    )  # fmt: skip
    temperature: float = field(4.0, "KD temperature T")
    epochs: int = field(100, "training epochs")
    batch_size: int = field(
        128, "global training batch: with torchrun's N processes each trains batch-size / N of it (a multiple of N)"
    )
    lr: float = field(1e-3, "Adam learning rate (cosine-annealed over the epochs)")
    weight_decay: float = field(1e-4, "Adam weight decay")
    curriculum: str = field(
        "none", "sample selection strategy per epoch (docs/curriculum.md)", choices=tuple(STRATEGIES),
        group="curriculum",
    )  # fmt: skip
    target: float = field(0.5, "target difficulty in [0, 1] of adaptive, soft, mixed and hard_mining")
    target_scale: str = field(
        "quantile", "quantile: the target is a rank (adaptive: 0 = the easiest --fraction of the data, 1 = the "
        "hardest); absolute: a difficulty value (the reference)", choices=TARGET_SCALES
    )  # fmt: skip
    fraction: float = field(
        0.7, "fraction of the training set per epoch (adaptive, soft, mixed, hard_mining, random_subset)"
    )
    pacing: str = field("root", "pacing function of easy_to_hard / hard_to_easy", choices=PACINGS)
    start_fraction: float = field(0.3, "easy_to_hard / hard_to_easy: fraction of the data at the first epoch")
    pace_epochs: float = field(0.5, "easy_to_hard / hard_to_easy: fraction of the epochs until all data is used")
    rescore_every: int = field(5, "epochs between refreshes of the student's half of the difficulty scores")
    cache_dir: str = field("~/.cache/kd-curriculum", "where the teacher's logits over the training set are cached")
    score_source: str = field(
        "pass", "pass: a scoring pass every --rescore-every epochs; train-pass: trained samples rescored every epoch "
        "from the training step's own logits, only the rest by a pass", choices=SCORE_SOURCES
    )  # fmt: skip
    teacher_logits: str = field(
        "online", "online: the teacher runs on each augmented batch; replay: as online, but each view's logits are "
        "stored (fp16) in --cache-dir by the first run that trains on it and read by later runs of the same data, "
        "teacher and --augment-seed; cached: its logits of the un-augmented image (cheapest; fixed views can overfit "
        "on long schedules)", choices=LOGIT_SOURCES
    )  # fmt: skip
    seed: int = field(0, "seed of initialisation, sampling and augmentation", group="run")
    augment_seed: int | None = field(
        None, "seed of the augmented views instead of --seed (seeds of a sweep that share it share the views, and "
        "--teacher-logits replay's stored teacher logits)"
    )  # fmt: skip
    device: str = field("auto", "auto, cpu, cuda or cuda:N")
    amp: bool = field(False, "mixed precision (bf16 where supported, else fp16 with loss scaling)")
    compile: bool = field(False, "torch.compile the student's training step (GPU; slow first epoch)")
    tf32: bool = field(True, "TF32 for fp32 matmuls and convolutions on Ampere and later GPUs (--no-tf32: full fp32)")
    memory_format: str = field(
        "auto", "layout of images and weights; auto: channels_last on a GPU, contiguous on a CPU",
        choices=MEMORY_FORMATS,
    )  # fmt: skip
    out: str = field("", "run folder; default runs/<student>-lw<label weight>-<curriculum>-s<seed>")
    overwrite: bool = field(False, "replace the run already in --out")
    resume: str | None = field(None, "continue the interrupted run in this folder after its last completed epoch")

    # what a config.json written before a field existed meant by its absence (a resumed run computes as it did)
    BEFORE_FIELD = {"val_label_noise": 0.0}

    # Derived from the flags, each in one place

    def label_noise_spec(self) -> LabelNoise:
        """The noise in the training and validation labels: drawn from --seed alone, so paired runs share it."""
        val = self.label_noise if self.val_label_noise is None else self.val_label_noise
        return LabelNoise(self.label_noise, val, self.label_noise_kind, seeds.derive(self.seed, "label-noise"))

    @property
    def label_gates(self) -> tuple[str, ...]:
        """The label gates a run may use (the Curriculum's), the first by default."""
        return (self.label_gate,)

    @property
    def strategy(self) -> type[Strategy]:
        return STRATEGIES[self.curriculum]

    @property
    def view_seed(self) -> int:
        """The seed of the augmented views: --augment-seed, by default --seed."""
        return self.seed if self.augment_seed is None else self.augment_seed

    @property
    def scores_from_train_pass(self) -> bool:
        """The training steps' own logits refresh the scores of the samples they train on (--score-source)."""
        return self.strategy.reads_scores and self.score_source == "train-pass"

    @property
    def needs_teacher(self) -> bool:
        """A run loads the teacher for KD (label weight < 1), for difficulty scores, or for --teacher-logits cached."""
        return self.label_weight < 1 or self.strategy.reads_scores or self.teacher_logits == "cached"

    @property
    def steps_read_logits(self) -> bool:
        """The training steps read the teacher's logits: KD (label weight < 1), or difficulty scores from the steps."""
        return self.label_weight < 1 or self.scores_from_train_pass

    @property
    def fills_cache(self) -> bool:
        """A run may write its teacher's logits into --cache-dir (the scoring cache or the view store)."""
        gates_read_teacher = any(gate in TEACHER_GATES for gate in self.label_gates)  # they read the scoring cache
        return self.strategy.reads_scores or self.teacher_logits != "online" or gates_read_teacher

    def teacher_spec(self) -> TeacherSpec:
        return TeacherSpec(self.teacher, self.teacher_checkpoint, self.teacher_weights, self.teacher_logits,
                           self.cache_dir)  # fmt: skip

    def curriculum_spec(self) -> CurriculumSpec:
        return CurriculumSpec(
            self.curriculum, fraction=self.fraction, target_scale=self.target_scale, pacing=self.pacing,
            start_fraction=self.start_fraction,
            full_data_epoch=max(1, round(self.pace_epochs * self.epochs)),  # --pace-epochs is a fraction of them
            rescore_every=self.rescore_every, score_source=self.score_source, label_gates=self.label_gates,
        )  # fmt: skip


def check_config(config: TrainConfig) -> None:
    """Flag values a run cannot use, each with its fix."""
    rules = [
        (0 <= config.label_weight <= 1, "--label-weight must lie in [0, 1] (1 = labels only, 0 = teacher only)"),
        (config.temperature > 0, "--temperature must be > 0 (the reference uses 4)"),
        (config.epochs >= 1, "--epochs must be at least 1"),
        (config.batch_size >= 2, "--batch-size must be at least 2 (BatchNorm cannot train on one sample)"),
        (0 <= config.seed <= MAX_SEED, f"--seed must lie in [0, {MAX_SEED}]"),
        (0 <= config.view_seed <= MAX_SEED, f"--augment-seed must lie in [0, {MAX_SEED}]"),
        (config.lr > 0 and config.weight_decay >= 0, "--lr must be > 0 and --weight-decay >= 0"),
        (0 < config.fraction <= 1, "--fraction must lie in (0, 1]"),
        (0 <= config.target <= 1, "--target must lie in [0, 1]"),
        (
            0 < config.start_fraction <= 1 and 0 < config.pace_epochs <= 1,
            "--start-fraction and --pace-epochs must lie in (0, 1]",
        ),
        (config.rescore_every >= 1, "--rescore-every must be >= 1"),
        (config.workers is None or config.workers >= 0, "--workers must be >= 0"),
        (config.image_size is None or config.image_size >= 16, "--image-size must be at least 16"),
        (config.min_scale is None or 0 < config.min_scale <= 1, "--min-scale must lie in (0, 1]"),
        (0 <= config.label_noise < 1, "--label-noise must lie in [0, 1) (a fraction of the training labels)"),
        (
            config.val_label_noise is None or 0 <= config.val_label_noise < 1,
            "--val-label-noise must lie in [0, 1) (a fraction of the validation labels)",
        ),
        (
            config.label_gate == "all" or 0 < config.label_weight < 1,
            f"--label-gate {config.label_gate} gates the label term of KD: give a --label-weight between 0 and 1",
        ),
        (
            config.label_gate != "oracle" or config.label_noise > 0,
            "--label-gate oracle drops the labels --label-noise replaced: give --label-noise > 0",
        ),
    ]
    for ok, message in rules:
        if not ok:
            raise UserError(message + ".")
    if not timm.is_model(config.student):
        raise UserError(f"timm has no model {config.student!r}; pick one of timm.list_models() (e.g. mobilenetv2_100).")
    for flag in ("teacher_checkpoint", "teacher_weights", "student_weights"):
        path = getattr(config, flag)
        if path and not Path(path).is_file():
            raise UserError(f"--{flag.replace('_', '-')} {path} does not exist; check the path.")
    if config.fills_cache:
        check_writable_folder(config.cache_dir, "--cache-dir")


def default_out(config: TrainConfig) -> str:
    return f"runs/{config.student}-lw{config.label_weight:g}-{config.curriculum}-s{config.seed}"
