"""Tests of data.py on data the tests make themselves: the synthetic set, a tiny ImageFolder of JPEGs named by
WordNet ids, a tiny parquet set in the timm/mini-imagenet schema, and hub loading with no network."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import ImageNetInfo

from common.errors import UserError
from conftest import write_image_folder
from data import splits as data

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = "synthetic:classes=4,train=40,val=12,test=12,size=32,seed=1"


# ----------------------------------------------------------------------------------------------------------------------
# Synthetic


@pytest.fixture(scope="module")
def synthetic():
    return data.load_data(SYNTHETIC)


def test_synthetic_sizes_and_shapes(synthetic):
    assert (len(synthetic.train), len(synthetic.score), len(synthetic.val), len(synthetic.test)) == (40, 40, 12, 12)
    assert synthetic.image_size == 32
    image, label, index = synthetic.train[(5, 0)]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert 0 <= label < 4 and index == 5
    for view in (synthetic.score, synthetic.val, synthetic.test):
        image, label, index = view[3]
        assert image.shape == (3, 32, 32) and 0 <= label < 4 and index == 3
    assert synthetic.score[7][1] == synthetic.train[(7, 2)][1] == synthetic.train.labels[7]


def test_synthetic_class_names_are_imagenet_wnids(synthetic):
    imagenet = set(ImageNetInfo().label_names())
    assert len(synthetic.class_names) == 4 and len(set(synthetic.class_names)) == 4
    assert all(name in imagenet for name in synthetic.class_names)
    assert set(synthetic.train.labels.tolist()) <= set(range(4))


def test_synthetic_is_deterministic(synthetic):
    again = data.load_data(SYNTHETIC)
    for i in (0, 17, 39):
        torch.testing.assert_close(again.score[i][0], synthetic.score[i][0], rtol=0, atol=0)
        torch.testing.assert_close(again.train[(i, 3)][0], synthetic.train[(i, 3)][0], rtol=0, atol=0)
    np.testing.assert_array_equal(again.train.labels, synthetic.train.labels)
    assert again.identity == synthetic.identity


def test_synthetic_augmentation_depends_on_epoch_only(synthetic):
    first, other_epoch = synthetic.train[(2, 3)][0], synthetic.train[(2, 4)][0]
    assert not torch.equal(first, other_epoch)
    torch.manual_seed(123)  # the global RNG must neither change the augmentation nor be changed by it
    state = torch.get_rng_state()
    torch.testing.assert_close(synthetic.train[(2, 3)][0], first, rtol=0, atol=0)
    assert torch.equal(torch.get_rng_state(), state)


def test_synthetic_seed_changes_images(synthetic):
    other = data.load_data(SYNTHETIC.replace("seed=1", "seed=2"))
    assert not torch.equal(other.score[0][0], synthetic.score[0][0])
    assert other.identity != synthetic.identity


def test_synthetic_hardness_in_unit_range_and_varies(synthetic):
    hardness = synthetic.hardness
    assert hardness.shape == (40,)
    assert hardness.min() >= 0 and hardness.max() <= 1
    assert hardness.std() > 0.1


def test_synthetic_hardness_shows_in_images():
    # Hard samples carry Gaussian noise (std 0.35 h): neighbouring pixels differ more than on a smooth clean grating.
    # Compare the mean absolute horizontal pixel step of the five easiest and five hardest samples of class 0.
    splits = data.load_data("synthetic:classes=2,train=200,val=2,test=2,size=32,seed=0")
    label = splits.score.labels
    easy = [i for i in np.argsort(splits.hardness) if label[i] == 0][:5]
    hard = [i for i in np.argsort(splits.hardness)[::-1] if label[i] == 0][:5]
    noise = [float(torch.diff(splits.score[i][0], dim=-1).abs().mean()) for i in easy + hard]
    assert np.mean(noise[5:]) > np.mean(noise[:5])


@pytest.mark.parametrize("spec", ["synthetic:classes=x", "synthetic:foo=1", "synthetic:classes=1", "synthetic:train=0"])
def test_bad_synthetic_options_are_user_errors(spec):
    with pytest.raises(UserError, match="synthetic"):
        data.load_data(spec)


# ----------------------------------------------------------------------------------------------------------------------
# ImageFolder of JPEGs


def test_image_folder_labels_and_class_names(tmp_path):
    splits = data.load_data(str(write_image_folder(tmp_path)), image_size=32)
    assert splits.class_names == ["n01440764", "n01443537"]
    assert splits.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert (len(splits.val), len(splits.test)) == (6, 6)
    for view in (splits.score, splits.val, splits.test):
        for i in range(6):
            image, label, index = view[i]
            assert image.shape == (3, 32, 32) and index == i
            # Class 0 (n01440764) was drawn red, class 1 blue: the label must match the pixels.
            red_minus_blue = float(image[0].mean() - image[2].mean())
            assert label == (0 if red_minus_blue > 0 else 1)
    image, label, index = splits.train[(4, 1)]
    assert image.shape == (3, 32, 32) and label == 1 and index == 4


def test_image_folder_class_names_sorted_whatever_the_listing_order(tmp_path):
    # Eight classes created in reverse order: a directory listing is unlikely to come back sorted by chance.
    wnids = ImageNetInfo().label_names()[100:108][::-1]
    splits = data.load_data(str(write_image_folder(tmp_path, classes=wnids, per_class=1)), image_size=32)
    assert splits.class_names == sorted(wnids)
    for label, path in zip(splits.score.labels, splits.score.source.paths, strict=True):
        assert splits.class_names[label] == path.parent.name


def test_image_folder_accepts_validation_folder(tmp_path):
    root = write_image_folder(tmp_path, splits=("train", "validation", "test"), per_class=2)
    splits = data.load_data(str(root), image_size=32)
    assert len(splits.val) == 4 and splits.val.labels.tolist() == [0, 0, 1, 1]


def test_image_folder_missing_test_split(tmp_path):
    root = write_image_folder(tmp_path, splits=("train", "val"))
    with pytest.raises(UserError, match="test"):
        data.load_data(str(root))


def test_image_folder_split_with_other_classes(tmp_path):
    root = write_image_folder(tmp_path, splits=("train", "val"))
    write_image_folder(root, splits=("test",), classes=["n01440764", "n15075141"])
    with pytest.raises(UserError, match="same classes"):
        data.load_data(str(root))


def test_image_folder_corrupt_image_named_when_read(tmp_path):
    root = write_image_folder(tmp_path)
    broken = root / "train" / "n01443537" / "img1.jpg"
    broken.write_bytes(b"this is not a jpeg")
    splits = data.load_data(str(root), image_size=32)  # listing files does not decode them
    splits.score[0]  # a good file still reads
    index = [str(p) for p in splits.score.source.paths].index(str(broken))
    with pytest.raises(UserError, match="img1.jpg") as info:
        splits.score[index]
    assert str(broken) in str(info.value)


def test_nonexistent_path_is_user_error():
    with pytest.raises(UserError, match="/nonexistent/x"):
        data.load_data("/nonexistent/x")


# ----------------------------------------------------------------------------------------------------------------------
# Parquet in the timm/mini-imagenet schema


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """Keep load_dataset's Arrow cache inside the test's folder (datasets reads HF_HOME only at import)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    return tmp_path


def write_parquet_set(root: Path, label_feature, labels_per_split) -> Path:
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": label_feature})
    (root / "data").mkdir(parents=True)
    for split, labels in labels_per_split.items():
        images = [Image.new("RGB", (24, 20), (200, 30, 30) if y == 0 else (30, 30, 200)) for y in labels]
        table = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
        table.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root


def test_parquet_set_loads(hf_cache):
    import datasets

    root = write_parquet_set(
        hf_cache / "mini",
        datasets.ClassLabel(names=["n01440764", "n01443537"]),
        {"train": [0, 1, 1, 0], "validation": [1, 0], "test": [0, 1, 1]},
    )
    splits = data.load_data(str(root), image_size=32)
    assert splits.class_names == ["n01440764", "n01443537"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (4, 2, 3)
    assert splits.train.labels.tolist() == [0, 1, 1, 0]
    assert splits.val.labels.tolist() == [1, 0]
    image, label, index = splits.test[2]
    assert image.shape == (3, 32, 32) and label == 1 and index == 2
    assert float(image[2].mean() - image[0].mean()) > 0  # label 1 was drawn blue
    image, label, index = splits.train[(1, 0)]
    assert image.shape == (3, 32, 32) and label == 1


def test_parquet_without_class_names_is_user_error(hf_cache):
    import datasets

    root = write_parquet_set(
        hf_cache / "plain", datasets.Value("int64"), {"train": [0, 1], "validation": [1], "test": [0]}
    )
    with pytest.raises(UserError, match="class names"):
        data.load_data(str(root))


# ----------------------------------------------------------------------------------------------------------------------
# Hub with no network


def test_unreachable_hub_is_one_fast_error_naming_the_offline_ways(tmp_path):
    """A hub that cannot be reached (a closed port here; HF_HUB_OFFLINE=1 takes the same path): one connection attempt,
    no retries, then one error that names the download command, --data DIR and --data synthetic."""
    # huggingface_hub and datasets read their settings at import, so this runs in a fresh interpreter.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HF_")}, "HF_HOME": str(tmp_path)}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    # Counted, not timed: every TCP connection attempt goes through socket.connect; one check, no retries.
    code = (
        "import socket, datasets\nfrom common import errors\nfrom data import splits\n"
        "attempts, connect = [], socket.socket.connect\n"
        "def counted(self, address):\n"
        "    attempts.append(address)\n"
        "    return connect(self, address)\n"
        "socket.socket.connect = counted\n"
        "try:\n"
        "    splits.load_data('timm/mini-imagenet')\n"
        "except errors.UserError as err:\n"
        "    print(len(attempts))\n"
        "    print(err)\n"
        "    raise SystemExit(3)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 3, result.stderr
    attempts, message = result.stdout.splitlines()
    assert int(attempts) == 1, "the hub was tried more than once"
    assert "hf download timm/mini-imagenet --repo-type dataset --local-dir DIR" in message
    assert "--data DIR" in message and "--data synthetic" in message


# ----------------------------------------------------------------------------------------------------------------------
# Label noise


def test_label_noise_is_reproducible_per_seed_and_touches_only_training_labels(synthetic):
    noisy = data.load_data(SYNTHETIC, noise=data.LabelNoise(train=0.25, seed=5))
    again = data.load_data(SYNTHETIC, noise=data.LabelNoise(train=0.25, seed=5))
    other = data.load_data(SYNTHETIC, noise=data.LabelNoise(train=0.25, seed=6))
    clean = synthetic.train.labels
    np.testing.assert_array_equal(noisy.train.labels, again.train.labels)
    assert not np.array_equal(noisy.train.labels, other.train.labels)
    np.testing.assert_array_equal(noisy.train.labels, data.noisy_labels(clean, 4, 0.25, 5))
    np.testing.assert_array_equal(noisy.flipped, noisy.train.labels != clean)
    assert noisy.flipped.sum() == 10  # exactly round(0.25 * 40), each to another class
    np.testing.assert_array_equal(noisy.score.labels, noisy.train.labels)  # the scoring view shares them
    assert noisy.score[7][1] == noisy.train[(7, 2)][1] == noisy.train.labels[7]
    for split in ("val", "test"):
        np.testing.assert_array_equal(getattr(noisy, split).labels, getattr(synthetic, split).labels)
    flipped = int(np.flatnonzero(noisy.flipped)[0])  # a relabelled sample keeps its image (drawn from its true class)
    torch.testing.assert_close(noisy.score[flipped][0], synthetic.score[flipped][0], rtol=0, atol=0)
    assert synthetic.identity == noisy.identity == other.identity  # same images: caches of views and logits shared
    assert (
        synthetic.flipped is None and data.load_data(SYNTHETIC, noise=data.LabelNoise()).identity == synthetic.identity
    )


def test_label_noise_on_an_image_folder(tmp_path):
    root = write_image_folder(tmp_path)
    clean = data.load_data(str(root), image_size=32)
    noisy = data.load_data(str(root), image_size=32, noise=data.LabelNoise(train=0.5, seed=1))
    assert noisy.flipped.sum() == round(0.5 * len(clean.train))
    np.testing.assert_array_equal(noisy.train.labels[~noisy.flipped], clean.train.labels[~noisy.flipped])
    np.testing.assert_array_equal(noisy.val.labels, clean.val.labels)
    np.testing.assert_array_equal(noisy.test.labels, clean.test.labels)
    assert noisy.identity == clean.identity
