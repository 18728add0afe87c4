"""Benchmark the pipeline's costs on synthetic data, on whatever device is present.

    python bench.py                                   # CPU-sized defaults
    python bench.py --train 20000 --image-size 224 --teacher resnet152 --amp --workers 8   # a GPU

Each figure is the median of --repeats timed repetitions after one warm-up. Ratios to a labels-only training epoch
are the headline; absolute times depend on the machine. Runs the real code paths (Experiment, TrainingRun).
"""

from __future__ import annotations

import dataclasses
import json
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import bookkeeping
import engine
import models
import teacher
import train_student
import train_student_rl
from cli import field, parse_config
from curriculum_dataloader import TrainPassScores
from data import synthetic_class_names
from devices import pick_device, sum_across_processes
from errors import run_cli
from rl_curriculum_env import CurriculumEnv

RESCORE_EVERY = 5  # train_student.py's default


@dataclass
class BenchConfig:
    train: int = field(1024, "synthetic training images", group="data")
    classes: int = field(10, "synthetic classes")
    image_size: int = field(32, "input size (synthetic images are resized to it)")
    student: str = field("mobilenetv2_100", "student model", group="models")
    teacher: str = field("resnet18", "teacher architecture (random weights: the cost is what is measured)")
    batch_size: int = field(128, "training batch size", group="run")
    workers: int = field(0, "DataLoader workers")
    device: str = field("auto", "auto, cpu, cuda")
    amp: bool = field(False, "mixed precision")
    repeats: int = field(3, "timed repetitions per figure (median reported)")
    agent_epochs: int = field(10, "epochs of the PPO-steered run that times the agent (it updates every 5)")
    json: str = field("bench.json", "where to write the figures")


def timed(functions: dict, repeats: int, device: torch.device) -> dict:
    """Median seconds of each function over `repeats` rounds after one warm-up round. The functions take turns within
    a round, so a slow stretch of a shared machine hits all of them alike instead of skewing one ratio."""
    times = {name: [] for name in functions}
    for round_ in range(repeats + 1):
        for name, fn in functions.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def make_config(bench: BenchConfig, teacher_checkpoint: Path, cache_dir: Path, config_class=train_student.Config,
                **overrides):  # fmt: skip
    data = f"synthetic:classes={bench.classes},train={bench.train},val=64,test=64,size=32"
    argv = ["--data", data, "--image-size", str(bench.image_size), "--student", bench.student,
            "--teacher-checkpoint", str(teacher_checkpoint), "--batch-size", str(bench.batch_size),
            "--workers", str(bench.workers), "--device", bench.device, "--cache-dir", str(cache_dir),
            "--curriculum", "adaptive", "--amp" if bench.amp else "--no-amp"]  # fmt: skip
    config = parse_config(config_class, argv)
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


def make_run(bench: BenchConfig, teacher_checkpoint: Path, cache_dir: Path, **overrides) -> engine.TrainingRun:
    return engine.TrainingRun(engine.Experiment(make_config(bench, teacher_checkpoint, cache_dir, **overrides)))


def agent_figures(bench: BenchConfig, teacher_checkpoint: Path, cache_dir: Path) -> dict:
    """A short PPO-steered run: the agent's time per epoch (prediction and PPO updates) beside the epoch's time."""
    config = make_config(bench, teacher_checkpoint, cache_dir, train_student_rl.RLConfig, epochs=bench.agent_epochs)
    env = CurriculumEnv(engine.Experiment(config))
    train_student_rl.steer(
        train_student_rl.make_agent(config, env), env, config.episodes, learn=True, purpose="agent-full"
    )
    agent_seconds = [row["agent_seconds"] for row in env.history]
    epoch_seconds = [row["seconds"] for row in env.history]
    return {"agent_s_per_epoch": statistics.mean(agent_seconds), "rl_epoch_s": statistics.mean(epoch_seconds)}


def epoch_fn(run: engine.TrainingRun, cached: bool = False, train_pass: bool = False, replay: bool = False):
    """One training epoch over the whole training set, as TrainingRun.train_epoch runs it (without validation).
    `replay`: the teacher's logits of the epoch's views read from the store (filled here first), as a run with
    --teacher-logits replay after the first does, reading the epoch's file included."""
    exp = run.experiment
    exp.sampler.set_epoch(1, np.arange(len(exp.data.train)))
    config = dataclasses.replace(run.config, teacher_logits="cached" if cached else "replay" if replay else "online")
    source = teacher.choose_source(config, exp.teacher, exp.data, exp.device, exp.dtype, exp.source.predict)
    if replay:  # fill the store
        source.start_epoch(1)
        engine.train_one_epoch(run.model, exp.train_loader, source, run.step_settings())
        source.end_epoch()

    def epoch():
        recorder = TrainPassScores(len(exp.data.train), exp.device) if train_pass else None
        source.start_epoch(1)
        engine.train_one_epoch(run.model, exp.train_loader, source, run.step_settings(),
                               on_logits=recorder.record if recorder else None)  # fmt: skip
        if recorder:
            recorder.collect(sum_across_processes)

    return epoch


def measure(bench: BenchConfig, teacher: Path, cache: Path, device: torch.device) -> dict:
    labels = make_run(bench, teacher, cache, label_weight=1.0)
    kd = make_run(bench, teacher, cache, label_weight=0.0)
    exp = kd.experiment
    exp.source.scoring_logits()  # fill the cache

    def recompute():
        exp.source.scoring = engine.predict_logits(exp.teacher, exp.score_loader, device, exp.dtype, "t")
        kd.rescore()

    def stale_pass():
        """train-pass: a pass over the samples an adaptive epoch left out (1 - fraction of them)."""
        kd.curriculum.score_source = "train-pass"
        kd.epoch, kd.curriculum.trained_epoch[:] = 1, 0
        kd.curriculum.trained_epoch[: round(kd.config.fraction * len(exp.data.train))] = 1
        kd.rescore()
        kd.curriculum.score_source = "pass"

    figures = timed(
        {
            "epoch_labels_s": epoch_fn(labels),
            "epoch_kd_online_s": epoch_fn(kd),
            "epoch_kd_cached_s": epoch_fn(kd, cached=True),
            "epoch_kd_replay_s": epoch_fn(kd, replay=True),
            "epoch_kd_train_pass_s": epoch_fn(kd, train_pass=True),
            "teacher_forward_s": lambda: engine.predict_logits(exp.teacher, exp.score_loader, device, exp.dtype, "t"),
            "score_cached_s": kd.rescore,
            "score_recompute_s": recompute,
            "score_stale_pass_s": stale_pass,
        },
        bench.repeats,
        device,
    )
    figures.update(agent_figures(bench, teacher, cache))
    return figures


def main(argv=None) -> None:
    bench = parse_config(BenchConfig, argv, description=__doc__)
    device = pick_device(bench.device)
    figures = {**vars(bench), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        teacher = models.create_model(bench.teacher, bench.classes)
        checkpoint = {"model": bench.teacher, "class_names": synthetic_class_names(bench.classes),
                      "state_dict": teacher.state_dict()}  # fmt: skip
        bookkeeping.save_checkpoint(tmp / "teacher.pt", checkpoint)
        figures.update(measure(bench, tmp / "teacher.pt", tmp / "cache", device))

    base = figures["epoch_labels_s"]
    for name in ("labels", "kd_online", "kd_cached", "kd_replay", "kd_train_pass"):
        figures[f"images_per_s_{name}"] = bench.train / figures[f"epoch_{name}_s"]
    figures["ratio_kd_online"] = figures["epoch_kd_online_s"] / base
    figures["ratio_kd_online_budget"] = figures["epoch_kd_online_s"] / (base + figures["teacher_forward_s"])
    figures["ratio_kd_cached"] = figures["epoch_kd_cached_s"] / base
    figures["ratio_kd_replay"] = figures["epoch_kd_replay_s"] / base
    figures["replay_store_mib_per_epoch"] = bench.train * (bench.classes + 1) * 2 / 2**20
    figures["ratio_score_cached"] = figures["score_cached_s"] / base
    figures["ratio_score_recompute"] = figures["score_recompute_s"] / base
    train_pass_cost = figures["epoch_kd_train_pass_s"] - figures["epoch_kd_online_s"]
    figures["ratio_train_pass"] = (train_pass_cost + figures["score_stale_pass_s"] / RESCORE_EVERY) / base
    figures["ratio_agent"] = figures["agent_s_per_epoch"] / figures["rl_epoch_s"]
    figures["peak_host_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        figures["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    print_table(figures)
    Path(bench.json).write_text(json.dumps(figures, indent=2) + "\n")


def print_table(figures: dict) -> None:
    rows = [
        ("training epoch, labels only", "epoch_labels_s", None, "1 (reference)"),
        ("training epoch, KD, online teacher", "epoch_kd_online_s", "ratio_kd_online", ""),
        ("  vs labels-only + teacher forward", None, "ratio_kd_online_budget", "<= 1.0"),
        ("training epoch, KD, cached teacher logits", "epoch_kd_cached_s", "ratio_kd_cached", "<= 1.1"),
        ("training epoch, KD, replayed teacher logits of the views", "epoch_kd_replay_s", "ratio_kd_replay", "<= 1.1"),
        ("teacher forward over the training set", "teacher_forward_s", None, ""),
        ("scoring pass, teacher logits cached", "score_cached_s", "ratio_score_cached", "<= 0.35"),
        ("scoring pass, teacher recomputed", "score_recompute_s", "ratio_score_recompute", ""),
        ("train-pass scores: epoch with them (online KD)", "epoch_kd_train_pass_s", None, ""),
        ("  pass over the unselected 30%", "score_stale_pass_s", None, ""),
        (f"  train-pass scoring per epoch (pass every {RESCORE_EVERY})", None, "ratio_train_pass", "<= 0.05"),
        ("RL agent per epoch (vs that run's epochs)", "agent_s_per_epoch", "ratio_agent", "< 0.01"),
    ]
    print(f"device: {figures['device']}  train images: {figures['train']}  image size: {figures['image_size']}")
    names = ("labels", "kd_online", "kd_cached", "kd_replay")
    speeds = ", ".join(f"{name} {figures[f'images_per_s_{name}']:.0f}" for name in names)
    print(f"training images/s: {speeds}")
    print("| measure | seconds | x labels-only epoch | target |\n|---|---|---|---|")
    for label, seconds, ratio, target in rows:
        if (seconds and seconds not in figures) or (ratio and ratio not in figures):
            continue
        s = f"{figures[seconds]:.3f}" if seconds else ""
        r = f"{figures[ratio]:.4f}" if ratio else ""
        print(f"| {label} | {s} | {r} | {target} |")
    print(f"replay store: {figures['replay_store_mib_per_epoch']:.2f} MiB per epoch ({figures['train']} views)")
    memory = f"peak host memory {figures['peak_host_mib']:.0f} MiB"
    if "peak_gpu_mib" in figures:
        memory += f", peak GPU memory {figures['peak_gpu_mib']:.0f} MiB"
    print(memory)


if __name__ == "__main__":
    run_cli(main)
