"""A rehearsal of the real path: the reference models (ResNet-152 teacher from a local ImageNet weights file,
MobileNetV2 student) at 224 px on ImageNet-size JPEGs in timm/mini-imagenet's parquet schema, through the fast data
path, for one short epoch on the CPU. Random weights: what is checked is that the path runs end to end."""

import json

import pytest
import timm
import torch

from conftest import run_script
from data.jpegs import write_imagenet_like_set
from data.synthetic import synthetic_class_names

NAMES = synthetic_class_names(4)  # real ImageNet WordNet ids, so the teacher's 1000 logits are sliced by id


@pytest.mark.slow
def test_reference_models_run_at_224_px_on_imagenet_size_jpegs(tmp_path):
    folder = write_imagenet_like_set(tmp_path / "mini", NAMES, {"train": 4, "val": 2, "test": 2})
    assert 90_000 < min(p.stat().st_size for p in folder.glob("train-*.parquet")) / 4 < 160_000  # ImageNet's ~110 KB
    weights = tmp_path / "resnet152.pth"
    torch.save(timm.create_model("resnet152.tv_in1k").state_dict(), weights)  # stands in for the downloaded file
    out = tmp_path / "run"
    run_script("train_student.py", "--data", folder, "--teacher-weights", weights, "--label-weight", 0,
               "--curriculum", "adaptive", "--fraction", 1.0, "--epochs", 1, "--batch-size", 2, "--workers", 0,
               "--device", "cpu", "--cache-dir", tmp_path / "cache", "--out", out,
               env={"HF_DATASETS_CACHE": str(tmp_path / "hf")}, timeout=900)  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert (config["teacher"], config["student"], config["loader"]) == ("resnet152.tv_in1k", "mobilenetv2_100", "auto")
    results = json.loads((out / "results.json").read_text())
    assert 0 <= results["test_acc"] <= 100 and results["params"] > 2_000_000  # MobileNetV2 with a 4-way head
    checkpoint = torch.load(out / "best.pt", map_location="cpu", weights_only=False)
    assert checkpoint["image_size"] == 224
    assert len(list((tmp_path / "cache").glob("fixed-views-*.npy"))) == 3  # scoring, validation, test: decoded once
