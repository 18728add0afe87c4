"""The student as an ONNX file (docs/export.md): export with a dynamic batch axis, the check that onnxruntime gives the
torch model's logits on real test views, and the CPU latency of both.

The exporter is torch.onnx.export(dynamo=True), torch's default since 2.9 (through onnxscript): the TorchScript
exporter (dynamo=False) also works on these models but is deprecated and warns that it will be removed.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

from common.errors import UserError

INPUT, OUTPUT = "images", "logits"
# The check's bound on max |logit difference|, relative to the logits' scale: float32 kernels that sum in another
# order differ by ~1e-6 relative per layer; a wrong graph (a dropped op, another layout) is off by far more.
RELATIVE_TOLERANCE = 1e-3


def export_onnx(model: nn.Module, image_size: int, path: Path, metadata: dict) -> dict:
    """Write `model` (in eval mode, on the CPU) to `path` with a dynamic batch axis; `metadata` (class names,
    preprocessing) goes into the file's metadata_props, so a runtime without this repo can read it. Returns what was
    used (exporter, opset)."""
    example = torch.zeros(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch")
    torch.onnx.export(model, (example,), str(path), dynamo=True, verbose=False, input_names=[INPUT],
                      output_names=[OUTPUT], dynamic_shapes=({0: batch},), external_data=False)  # fmt: skip
    graph = onnx.load(str(path))
    onnx.helper.set_model_props(graph, {key: json.dumps(value) for key, value in metadata.items()})
    onnx.save(graph, str(path))
    opset = next(entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx"))
    return {"exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}", "opset": opset,
            "input": INPUT, "output": OUTPUT, "dynamic_axes": {INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}}  # fmt: skip


def onnx_session(path: Path, threads: int) -> onnxruntime.InferenceSession:
    """An onnxruntime CPU session on `threads` threads (one inter-op thread: the graph is a chain)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(session: onnxruntime.InferenceSession, images: torch.Tensor) -> np.ndarray:
    return session.run([OUTPUT], {INPUT: images.numpy()})[0]


def compare_logits(reference: torch.Tensor, logits: np.ndarray) -> dict:
    """How far the ONNX logits are from torch's: max |difference| and its bound (RELATIVE_TOLERANCE times the
    logits' largest magnitude, at least 1), top-1 agreement, and the near ties: images whose top two torch logits are
    within twice the bound, the only ones whose top-1 a difference within the bound can flip."""
    logits = torch.from_numpy(logits)
    bound = RELATIVE_TOLERANCE * max(1.0, reference.abs().max().item())
    top2 = reference.topk(min(2, reference.shape[1]), dim=1).values
    return {
        "images": len(reference),
        "max_abs_logit_difference": (logits - reference).abs().max().item(),
        "bound": bound,
        "top1_agreement": (logits.argmax(1) == reference.argmax(1)).float().mean().item(),
        "near_ties": int(((top2[:, 0] - top2[:, -1]) <= 2 * bound).sum()),
    }


def check_agreement(figures: dict) -> None:
    """One line, and no export, if onnxruntime does not reproduce the torch logits within the bound. Top-1 needs no
    bound of its own: a flip takes a difference of at least half the top-two gap, so within the bound only near ties
    can flip (none did in any export of docs/export.md)."""
    if figures["max_abs_logit_difference"] > figures["bound"]:
        raise UserError(
            f"the ONNX model disagrees with the torch model on {figures['images']} test views (max |logit difference| "
            f"{figures['max_abs_logit_difference']:.3g} > bound {figures['bound']:.3g}; top-1 agreement "
            f"{figures['top1_agreement']:.1%}); nothing was written: export with --format timm, and report the "
            "versions of torch, onnx and onnxruntime."
        )


def agreement_line(figures: dict) -> str:
    return (
        f"onnx check on {figures['images']} test views: max |logit difference| "
        f"{figures['max_abs_logit_difference']:.2e} (bound {figures['bound']:.2e}), top-1 agreement "
        f"{figures['top1_agreement']:.2%} ({figures['near_ties']} near ties)"
    )


@torch.inference_mode()
def cpu_latency(model: nn.Module, session, images: torch.Tensor, threads: int, repeats: int) -> dict:
    """Milliseconds per call of torch eager and onnxruntime on one image and on the batch `images`, on `threads` CPU
    threads: the median of `repeats` rounds after two warm-up rounds. The four calls take turns within a round, so a
    busy stretch of a shared machine slows all of them alike instead of skewing one ratio."""
    calls = {
        "torch_1": lambda: model(images[:1]),
        "onnxruntime_1": lambda: run_session(session, images[:1]),
        "torch_batch": lambda: model(images),
        "onnxruntime_batch": lambda: run_session(session, images),
    }
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    times = {name: [] for name in calls}
    try:
        for round_ in range(repeats + 2):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                if round_ >= 2:
                    times[name].append(1000 * (time.perf_counter() - start))
    finally:
        torch.set_num_threads(threads_before)
    figures = {f"{name}_ms": statistics.median(values) for name, values in times.items()}
    figures.update(batch=len(images), threads=threads, repeats=repeats, load_average=os.getloadavg()[0])
    figures["speedup_1"] = figures["torch_1_ms"] / figures["onnxruntime_1_ms"]
    figures["speedup_batch"] = figures["torch_batch_ms"] / figures["onnxruntime_batch_ms"]
    return figures


def latency_lines(figures: dict) -> list[str]:
    """The latency table as printed and as the model card shows it."""
    batch = figures["batch"]
    threads = f"{figures['threads']} thread" + ("s" if figures["threads"] > 1 else "")
    lines = [
        f"CPU latency, {threads}, median of {figures['repeats']} interleaved rounds (1-min load average "
        f"{figures['load_average']:.1f}):",
        "",
        "| input | torch eager | onnxruntime | torch / onnxruntime |",
        "|---|---|---|---|",
    ]
    for key, label in (("1", "1 image"), ("batch", f"batch of {batch}")):
        torch_ms, onnx_ms = figures[f"torch_{key}_ms"], figures[f"onnxruntime_{key}_ms"]
        lines.append(f"| {label} | {torch_ms:.2f} ms | {onnx_ms:.2f} ms | {figures[f'speedup_{key}']:.2f}x |")
    return lines
