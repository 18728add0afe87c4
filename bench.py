"""Benchmark the pipeline's costs on synthetic data, on whatever device is present.

    python bench.py                                   # CPU-sized defaults
    python bench.py --train 20000 --image-size 224 --teacher resnet152 --amp --workers 8   # a GPU
    python bench.py --only loader --json loader.json   # the data path alone: views per second per core
    python bench.py --only export --image-size 224 --repeats 20 --json export.json   # ONNX vs torch latency, CPU
    python bench.py --only gpu --json gpu.json        # the GPU acceptance check (gpu_check.py), < 10 min on a GPU

Each figure is the median of --repeats timed repetitions after one warm-up. Ratios to a labels-only training epoch
are the headline; absolute times depend on the machine. Runs the real code paths (Experiment, TrainingRun).
"""

from __future__ import annotations

import dataclasses
import json
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import models
from agents.base import drive
from agents.config import RLConfig
from agents.ppo import PPOAgent, PPOSettings
from analysis import gpu_check
from common import files, seeds
from common.cli import field, parse_config
from common.errors import run_cli
from data import views
from data.jpegs import write_imagenet_like_set, write_reduced_copy
from data.splits import load_data
from data.synthetic import synthetic_class_names
from exporters import onnx_file as onnx_export
from rl_curriculum_env import CurriculumEnv
from training import loop
from training.config import TrainConfig
from training.curriculum import EpochPlan, TrainPassScores
from training.devices import pick_device, sum_across_processes
from training.experiment import Experiment, TrainingRun
from training.teacher import choose_source

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
    json: str = field(
        "runs/bench/bench.json", "where to write the figures (runs/ is ignored by git: no stray file in a checkout)"
    )
    only: str = field(
        "all", "all: the training figures; loader: only the data path's rows; export: only the CPU latency of "
        "--student as exported by export.py (random weights), torch eager vs onnxruntime; gpu: the GPU acceptance "
        "check (gpu_check.py; a reduced form on a CPU)", choices=("all", "loader", "export", "gpu"),
    )  # fmt: skip
    loader_images: int = field(48, "ImageNet-size JPEGs the loader rows decode per round", group="loader rows")
    loader_size: int = field(224, "view size of the loader rows")
    prepared_side: int = field(320, "maximum side of the prepared copy (prepare_data.py) the loader rows also time")
    threads: int = field(1, "CPU threads of torch and onnxruntime", group="export rows")
    latency_batch: int = field(16, "images per call of the batch latency")
    gpu_workers: int | None = field(
        None, "loader workers of the check; default: the cores this process may use, less one", group="gpu check"
    )
    gpu_compile: str = field(
        "auto", "also time the student under --compile; auto: on a GPU only (on a CPU inductor's C++ build takes "
        "minutes)", choices=("auto", "on", "off")
    )  # fmt: skip
    gpu_processes: int = field(0, "processes of the multi-process rows; 0: every GPU present (none on a CPU)")


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


def make_config(bench: BenchConfig, teacher_checkpoint: Path, cache_dir: Path, config_class=TrainConfig,
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


def make_run(bench: BenchConfig, teacher_checkpoint: Path, cache_dir: Path, **overrides) -> TrainingRun:
    return TrainingRun(Experiment(make_config(bench, teacher_checkpoint, cache_dir, **overrides)))


def agent_figures(bench: BenchConfig, teacher_checkpoint: Path, cache_dir: Path) -> dict:
    """A short PPO-steered run: the agent's time per epoch (prediction and PPO updates) beside the epoch's time."""
    config = make_config(bench, teacher_checkpoint, cache_dir, RLConfig, epochs=bench.agent_epochs)
    with Experiment(config) as experiment:
        env = CurriculumEnv(experiment)
        seed_of = lambda: seeds.derive(config.seed, "agent-full", episode=env.episode, epoch=env.epoch)  # noqa: E731
        start = env.reset(seed=config.seed)[0], True, False
        drive(PPOAgent(PPOSettings.of(config), env), env, 1, True, seed_of, start)
    agent_seconds = [row["agent_seconds"] for row in env.history]
    epoch_seconds = [row["seconds"] for row in env.history]
    return {"agent_s_per_epoch": statistics.mean(agent_seconds), "rl_epoch_s": statistics.mean(epoch_seconds)}


def epoch_fn(run: TrainingRun, cached: bool = False, train_pass: bool = False, replay: bool = False):
    """One training epoch over the whole training set, as TrainingRun.train_epoch runs it (without validation).
    `replay`: the teacher's logits of the epoch's views read from the store (filled here first), as a run with
    --teacher-logits replay after the first does, reading the epoch's file included."""
    exp = run.experiment
    exp.sampler.set_epoch(1, np.arange(len(exp.data.train)))
    config = dataclasses.replace(run.config, teacher_logits="cached" if cached else "replay" if replay else "online")
    source = choose_source(config.teacher_spec(), config.steps_read_logits, exp.teacher, exp.data, exp.placement,
                           exp.source.predict)  # fmt: skip
    if replay:  # fill the store
        source.start_epoch(1)
        loop.train_one_epoch(run.model, exp.train_loader, source, run.step_settings())
        source.end_epoch()

    def epoch():
        recorder = TrainPassScores(len(exp.data.train), exp.device) if train_pass else None
        source.start_epoch(1)
        plan = EpochPlan(1, exp.sampler.indices, target=None, seen=None, recorder=recorder)
        loop.train_one_epoch(run.model, exp.train_loader, source, run.step_settings(), plan)
        if recorder:
            recorder.collect(sum_across_processes)

    return epoch


def measure(bench: BenchConfig, teacher: Path, cache: Path, device: torch.device) -> dict:
    labels = make_run(bench, teacher, cache, label_weight=1.0)
    kd = make_run(bench, teacher, cache, label_weight=0.0)
    exp = kd.experiment
    exp.source.scoring_logits()  # fill the cache

    def recompute():
        exp.source.scoring = loop.predict_logits(exp.teacher, exp.score_loader, exp.placement, "t")
        kd.rescore()

    def stale_pass():
        """train-pass: a pass over the samples an adaptive epoch left out (1 - fraction of them)."""
        spec = kd.curriculum.spec
        kd.curriculum.spec = dataclasses.replace(spec, score_source="train-pass")
        kd.epoch, kd.curriculum.trained_epoch[:] = 1, 0
        kd.curriculum.trained_epoch[: round(kd.config.fraction * len(exp.data.train))] = 1
        kd.rescore()
        kd.curriculum.spec = spec

    figures = timed(
        {
            "epoch_labels_s": epoch_fn(labels),
            "epoch_kd_online_s": epoch_fn(kd),
            "epoch_kd_cached_s": epoch_fn(kd, cached=True),
            "epoch_kd_replay_s": epoch_fn(kd, replay=True),
            "epoch_kd_train_pass_s": epoch_fn(kd, train_pass=True),
            "teacher_forward_s": lambda: loop.predict_logits(exp.teacher, exp.score_loader, exp.placement, "t"),
            "score_cached_s": kd.rescore,
            "score_recompute_s": recompute,
            "score_stale_pass_s": stale_pass,
        },
        bench.repeats,
        device,
    )
    labels.experiment.close()
    exp.close()
    figures.update(agent_figures(bench, teacher, cache))
    return figures


# ----------------------------------------------------------------------------------------------------------------------
# Loader rows: the data path at 224 px on ImageNet-size JPEGs, per core (one process, one thread)

FEED_TARGET = 3000  # img/s: about what a modern GPU trains MobileNetV2 at, or runs the ResNet-152 teacher at


def loader_paths(folder: Path, prepared: Path, size: int, cache: Path) -> dict:
    """name -> function that makes every view of one split once, on this process's one thread."""
    full = load_data(str(folder), size)
    small = load_data(str(prepared), size)
    fast_full = views.fast_splits(full, "uint8", cache, workers=0)
    fast_small = views.fast_splits(small, "uint8", cache, workers=0)

    def views_of(view, epoch_keyed: bool = True):
        return lambda: [view[(i, 1) if epoch_keyed else i] for i in range(len(view))]

    def stored_batches(view):  # what a loader does with a stored view: rows gathered into one batch
        return lambda: torch.utils.data.default_collate([view[i] for i in range(len(view))])

    return {
        "train_pil": views_of(full.train),
        "train_uint8_full_res": views_of(fast_full.train),
        "train_uint8_prepared": views_of(fast_small.train),
        "fixed_pil": views_of(full.val, epoch_keyed=False),
        "fixed_store": stored_batches(fast_full.val),
    }


def device_work(images: int, size: int):
    """The device's share of a training batch, timed here on the CPU: flip, jitter, normalise."""
    pixels = torch.randint(0, 256, (images, size, size, 3), dtype=torch.uint8)
    params = torch.cat([torch.rand(images, 4), torch.stack([torch.randperm(3) for _ in range(images)]).float()], 1)
    return lambda: views.to_device((pixels, params), torch.device("cpu"))


def measure_loader(images: int, size: int, prepared_side: int, repeats: int) -> dict:
    torch.set_num_threads(1)  # per core: one process, one thread (run with OMP_NUM_THREADS=1 too)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        names = ["n01440764", "n01443537", "n01484850", "n01491361"]
        counts = {"train": images, "val": images, "test": 2}
        folder = write_imagenet_like_set(tmp / "full", names, counts)
        start = time.perf_counter()
        write_reduced_copy(load_data(str(folder)), tmp / "small", prepared_side, quality=90, workers=1)
        prepare_s = (time.perf_counter() - start) / (2 * images + 2)
        paths = loader_paths(folder, tmp / "small", size, tmp / "cache")
        paths["device_train_batch"] = device_work(images, size)
        seconds = timed(paths, repeats, torch.device("cpu"))  # interleaved rounds, medians
        full_mb = sum(p.stat().st_size for p in folder.glob("train-*.parquet")) / images / 1000
        small_mb = sum(p.stat().st_size for p in (tmp / "small").glob("train-*.parquet")) / images / 1000
    figures = {f"loader_{name}_per_s": images / s for name, s in seconds.items()}
    figures["loader_prepare_ms_per_image"] = 1000 * prepare_s
    figures["loader_jpeg_kb_full"], figures["loader_jpeg_kb_prepared"] = full_mb, small_mb
    pil = figures["loader_train_pil_per_s"]
    figures["loader_train_speedup"] = figures["loader_train_uint8_prepared_per_s"] / pil
    figures["loader_train_speedup_full_res"] = figures["loader_train_uint8_full_res_per_s"] / pil
    figures["loader_fixed_speedup"] = figures["loader_fixed_store_per_s"] / figures["loader_fixed_pil_per_s"]
    return figures


def print_loader_table(figures: dict) -> None:
    kb, size = figures["loader_jpeg_kb_full"], figures["loader_size"]
    print(f"loader rows: {figures['loader_images']} ImageNet-size JPEGs ({kb:.0f} KB mean), {size} px views, "
          "one process, one thread; rounds interleaved, medians")  # fmt: skip
    print(f"| path (per core) | views/s | x today's | cores to feed {FEED_TARGET:,} img/s |\n|---|---|---|---|")
    rows = [
        ("train, today's PIL transform", "train_pil", "train_pil"),
        ("train, uint8 crop (device finishes), full resolution", "train_uint8_full_res", "train_pil"),
        (f"train, uint8 crop, prepared copy (max side {figures['prepared_side']})", "train_uint8_prepared",
         "train_pil"),
        ("fixed views, today's PIL transform", "fixed_pil", "fixed_pil"),
        ("fixed views, from the uint8 store", "fixed_store", "fixed_pil"),
        ("device part of a train view (flip, jitter, normalise; on this CPU)", "device_train_batch", None),
    ]  # fmt: skip
    for label, name, base in rows:
        speed = figures[f"loader_{name}_per_s"]
        ratio = f"{speed / figures[f'loader_{base}_per_s']:.2f}" if base else ""
        print(f"| {label} | {speed:,.0f} | {ratio} | {FEED_TARGET / speed:.1f} |")
    print(f"prepare_data.py: {figures['loader_prepare_ms_per_image']:.1f} ms per image on one process; "
          f"{figures['loader_jpeg_kb_prepared']:.0f} KB per prepared image")  # fmt: skip


def measure_export(bench: BenchConfig) -> dict:
    """export.py's ONNX file, check and latency for a --student of random weights on synthetic test views."""
    torch.manual_seed(0)
    model = models.create_model(bench.student, bench.classes).eval()
    spec = f"synthetic:classes={bench.classes},train=8,val=8,test={bench.latency_batch}"
    test = load_data(spec, bench.image_size).test
    images = torch.stack([test[index][0] for index in range(len(test))])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        onnx_export.export_onnx(model, bench.image_size, path, {})
        session = onnx_export.onnx_session(path, bench.threads)
        with torch.inference_mode():
            check = onnx_export.compare_logits(model(images), onnx_export.run_session(session, images))
        latency = onnx_export.cpu_latency(model, session, images, bench.threads, bench.repeats)
    print(f"{bench.student} at {bench.image_size} px, random weights; " + onnx_export.agreement_line(check))
    print(*onnx_export.latency_lines(latency), sep="\n")
    return {**{f"export_{key}": value for key, value in latency.items()}, "export_onnx_check": check}


def main(argv=None) -> None:
    bench = parse_config(BenchConfig, argv, description=__doc__)
    device = pick_device(bench.device)
    figures = {**vars(bench), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    if bench.only == "loader":
        figures.update(measure_loader(bench.loader_images, bench.loader_size, bench.prepared_side, bench.repeats))
        print_loader_table(figures)
        write_figures(bench.json, figures)
        return
    if bench.only == "export":
        figures.update(measure_export(bench))
        write_figures(bench.json, figures)
        return
    if bench.only == "gpu":
        with tempfile.TemporaryDirectory() as tmp:
            figures.update(gpu_check.main(bench, Path(tmp)))
        write_figures(bench.json, figures)
        if figures["gpu_failed"]:
            sys.exit(1)  # a FAIL line: the check's verdict, for a scheduler or a script
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        teacher = models.create_model(bench.teacher, bench.classes)
        checkpoint = {"model": bench.teacher, "class_names": synthetic_class_names(bench.classes),
                      "state_dict": teacher.state_dict()}  # fmt: skip
        files.save_checkpoint(tmp / "teacher.pt", checkpoint)
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
    write_figures(bench.json, figures)


def write_figures(path: str, figures: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures: {path}")


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
