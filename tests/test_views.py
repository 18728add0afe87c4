"""The fast data path (views.py): training views equal torchvision's reference view, fixed views equal the PIL path
bit for bit and are stored safely, the path is chosen where it applies, and runs on it resume exactly and keep their
teacher-view store apart from the PIL path's."""

import json

import numpy as np
import pytest
import torch
from test_resume import comparable, kill_part_way
from torchvision import transforms

from conftest import TINY, run_script, train_args, write_image_folder
from data import views
from data.jpegs import write_imagenet_like_set
from data.splits import SampleView, data_subset, load_data
from data.synthetic import synthetic_class_names
from data.transforms import IMAGENET_MEAN, IMAGENET_STD

CPU = torch.device("cpu")
NAMES = synthetic_class_names(4)  # the tiny teacher's classes: it slices onto this set


@pytest.fixture(scope="module")
def jpeg_set(tmp_path_factory):
    """ImageNet-size JPEGs in timm/mini-imagenet's schema, loaded (the Arrow cache kept in the test's folder)."""
    import datasets

    root = tmp_path_factory.mktemp("jpegs")
    datasets.config.HF_DATASETS_CACHE = root / "hf-cache"
    folder = write_imagenet_like_set(root / "set", NAMES, {"train": 6, "val": 3, "test": 2})
    return folder


def reference_view(view: SampleView) -> SampleView:
    """The reference training view without its Normalize: flip and jitter on the PIL image, then ToTensor."""
    return SampleView(view.source, transforms.Compose(view.transform.transforms[:-1]), view.seed)


def test_crop_boxes_flips_and_jitter_come_from_the_reference_sampler(jpeg_set):
    splits = load_data(str(jpeg_set), image_size=64)
    reference = splits.train.transform.transforms
    crop = views.CropToUint8(splits.train.transform)
    image = splits.train.source.image(0)
    for seed in range(5):
        torch.manual_seed(seed)
        box, params = crop.draw(image)
        torch.manual_seed(seed)
        expected_box = reference[0].get_params(image, list(reference[0].scale), list(reference[0].ratio))
        flip = float(torch.rand(1) < 0.5)
        order, b, c, s, _ = reference[2].get_params(reference[2].brightness, reference[2].contrast,
                                                    reference[2].saturation, None)  # fmt: skip
        assert box == expected_box
        expected = [flip, b, c, s, *[k for k in order.tolist() if k != 3]]
        np.testing.assert_allclose(params.numpy(), expected, rtol=1e-6)


def test_train_view_matches_torchvisions_reference_view(jpeg_set):
    splits = load_data(str(jpeg_set), image_size=96)
    crop = views.CropToUint8(splits.train.transform, draft=False)
    fast = views.CropView(splits.train.source, crop, splits.train.seed)
    reference = reference_view(splits.train)
    for index in range(len(splits.train)):
        for epoch in (1, 2):
            expected, label, _ = reference[(index, epoch)]
            (pixels, params), fast_label, fast_index = fast[(index, epoch)]
            assert pixels.dtype == torch.uint8 and pixels.shape == (96, 96, 3)
            image = views.augment(views.scale_to_unit(pixels[None]), params[None])[0]
            assert (image - expected).abs().mean() <= 2 / 255  # the jitter's rounding: PIL works in uint8
            assert (fast_label, fast_index) == (label, index)


def test_the_fast_decoder_gives_the_same_view_as_pils(jpeg_set):
    """libjpeg-turbo through torchvision and through PIL decode alike: a view made from a source without its bytes
    (a proxy run's share) equals the one made from the bytes (without a draft, which only bytes allow)."""
    splits = load_data(str(jpeg_set), image_size=64)
    crop = views.CropToUint8(splits.train.transform, draft=False)
    from_bytes = views.CropView(splits.train.source, crop, 3)
    from_pil = SampleView(splits.train.source, crop, 3)
    for index in range(len(splits.train)):
        (pixels, params), _, _ = from_bytes[(index, 1)]
        (expected, expected_params), _, _ = from_pil[(index, 1)]
        assert torch.equal(pixels, expected) and torch.equal(params, expected_params)


def test_draft_decodes_less_only_where_the_box_is_twice_the_output():
    from PIL import Image

    def opened(size):
        import io

        buffer = io.BytesIO()
        Image.new("RGB", size, (120, 60, 30)).save(buffer, "JPEG")
        return Image.open(buffer)

    assert views.draft_scale(opened((500, 375)), 375, 375, 224) == 1  # ImageNet sizes at 224 px: never
    assert views.draft_scale(opened((1000, 900)), 900, 900, 224) == 4
    assert views.draft_scale(opened((1000, 900)), 460, 900, 224) == 2
    decoded = opened((1000, 900))
    decoded.load()
    assert views.draft_scale(decoded, 900, 900, 224) == 1  # already decoded: nothing to save


def test_a_broken_training_jpeg_is_one_clear_error(tmp_path):
    from common.errors import UserError

    folder = write_image_folder(tmp_path / "set")
    broken = sorted((folder / "train").rglob("*.jpg"))[0]
    broken.write_bytes(broken.read_bytes()[:40])
    splits = load_data(str(folder), image_size=16)
    view = views.CropView(splits.train.source, views.CropToUint8(splits.train.transform), 0)
    index = [str(p) for p in splits.train.source.paths].index(str(broken))
    with pytest.raises(UserError, match=f"{broken}.*delete or replace"):
        view[(index, 1)]


def test_device_side_adjustments_by_hand():
    grey = torch.full((1, 3, 2, 2), 0.8)
    factors = torch.tensor([[0.0, 0.5, 1.0, 1.0, 0.0, 1.0, 2.0]])  # no flip; brightness 0.5 first, then the rest
    torch.testing.assert_close(views.augment(grey, factors), torch.full((1, 3, 2, 2), 0.4))
    colour = torch.tensor([1.0, 0.0, 0.0])[None, :, None, None].expand(1, 3, 1, 2)
    saturation_zero = torch.tensor([[0.0, 1.0, 1.0, 0.0, 2.0, 0.0, 1.0]])
    torch.testing.assert_close(views.augment(colour, saturation_zero), torch.full((1, 3, 1, 2), 0.2989))
    ramp = torch.arange(4.0).reshape(1, 1, 1, 4).expand(1, 3, 1, 4) / 4
    flipped = views.augment(ramp, torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 2.0]]))
    torch.testing.assert_close(flipped, ramp.flip(-1))  # factors of 1 change nothing
    pixels = torch.tensor([[[[0, 255, 51]]]], dtype=torch.uint8)  # one NHWC pixel
    expected = (torch.tensor([0.0, 1.0, 0.2]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(views.to_device(pixels, CPU)[0, :, 0, 0], expected)


def test_device_side_flip_and_jitter_equal_torchvisions_tensor_functions():
    import torchvision.transforms.functional as F

    batch = torch.rand(6, 3, 8, 8)
    orders = [[0, 1, 2], [2, 1, 0], [1, 0, 2], [1, 2, 0], [2, 0, 1], [0, 2, 1]]  # every order of the three
    factors = [[1.2, 0.8, 1.1], [0.9, 1.2, 0.8], [1.0, 1.0, 1.0], [0.8, 0.9, 1.2], [1.1, 1.1, 0.9], [1.2, 0.8, 0.8]]
    params = torch.tensor([[i % 2, *f, *o] for i, (f, o) in enumerate(zip(factors, orders, strict=True))])
    adjust = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)
    out = views.augment(batch, params)
    for image, p, result in zip(batch, params, out, strict=True):
        image = F.hflip(image) if p[0] else image
        for kind in p[4:].long().tolist():
            image = adjust[kind](image, p[1 + kind].item())
        torch.testing.assert_close(result, image, rtol=0, atol=1e-6)


def test_fixed_views_from_the_store_equal_the_pil_path_bit_for_bit(jpeg_set, tmp_path):
    splits = load_data(str(jpeg_set), image_size=64)
    fast = views.fast_splits(splits, "uint8", tmp_path, workers=1)  # built in a worker process
    for plain, stored in ((splits.val, fast.val), (splits.score, fast.score), (splits.test, fast.test)):
        assert isinstance(stored, views.StoredView)
        for index in range(len(plain)):
            image, label, _ = stored[index]
            expected, expected_label, _ = plain[index]
            assert torch.equal(views.to_device(image[None], CPU)[0], expected) and label == expected_label


def test_a_damaged_or_unfinished_store_is_rebuilt_never_trusted(jpeg_set, tmp_path, monkeypatch):
    splits = load_data(str(jpeg_set), image_size=32)
    fast = views.fast_splits(splits, "uint8", tmp_path, workers=0)
    path = fast.val.path
    good = np.load(path).copy()
    assert len(list(tmp_path.glob("fixed-views-*.npy"))) == 3 and not list(tmp_path.glob(".*.tmp"))
    builds = []
    monkeypatch.setattr(views, "build_store", lambda *args: builds.append(args))
    views.fast_splits(splits, "uint8", tmp_path, workers=0)
    assert not builds  # valid stores are read, not rebuilt
    monkeypatch.undo()

    array = np.load(path, mmap_mode="r+")
    array[0] = 0  # overwritten under its marker
    array.flush()
    del array
    views.fast_splits(splits, "uint8", tmp_path, workers=0)
    np.testing.assert_array_equal(np.load(path), good)

    views.marker(path).unlink()  # a kill between the rename and the marker: the store is not known complete
    views.fast_splits(splits, "uint8", tmp_path, workers=0)
    assert views.marker(path).exists()

    path.write_bytes(path.read_bytes()[:1000])  # truncated
    views.fast_splits(splits, "uint8", tmp_path, workers=0)
    np.testing.assert_array_equal(np.load(path), good)


def test_an_unwritable_cache_dir_is_one_clear_error(jpeg_set, tmp_path):
    from common.errors import UserError

    (tmp_path / "file").write_text("")
    splits = load_data(str(jpeg_set), image_size=32)
    with pytest.raises(UserError, match="--cache-dir with .* GB free, or --loader pil"):
        views.fast_splits(splits, "uint8", tmp_path / "file" / "cache", workers=0)


def test_the_store_key_follows_the_data_split_and_view(jpeg_set, tmp_path):
    splits = load_data(str(jpeg_set), image_size=32)
    views.fast_splits(splits, "uint8", tmp_path, workers=0)
    views.fast_splits(load_data(str(jpeg_set), image_size=48), "uint8", tmp_path, workers=0)
    assert len(list(tmp_path.glob("fixed-views-*.npy"))) == 6


def test_auto_picks_the_fast_path_for_photographs_only(jpeg_set, tmp_path):
    synthetic = load_data(TINY)
    assert views.fast_splits(synthetic, "auto", tmp_path, 0) is synthetic  # today's path, exactly
    assert views.uses_uint8(load_data(str(jpeg_set)), "auto")
    jpegs = write_image_folder(tmp_path / "jpegs")  # conftest writes .jpg files
    assert views.uses_uint8(load_data(str(jpegs), image_size=16), "auto")
    pngs = tmp_path / "pngs"
    for path in sorted(jpegs.rglob("*.jpg")):
        target = pngs / path.relative_to(jpegs).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)
    assert not views.uses_uint8(load_data(str(pngs), image_size=16), "auto")
    assert not views.uses_uint8(load_data(str(pngs), image_size=16), "pil")
    assert views.uses_uint8(synthetic, "uint8")


def test_prepare_data_writes_a_smaller_copy_in_the_same_schema(jpeg_set, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    out = tmp_path / "small"
    run_script("prepare_data.py", "--data", jpeg_set, "--out", out, "--max-side", 200, "--workers", 1)
    import datasets

    datasets.config.HF_DATASETS_CACHE = tmp_path / "hf-here"
    full, small = load_data(str(jpeg_set)), load_data(str(out))
    assert small.class_names == full.class_names == NAMES
    for split in ("train", "val", "test"):
        before, after = getattr(full, split), getattr(small, split)
        assert after.labels.tolist() == before.labels.tolist()
        for index in range(len(after)):
            (width, height), (small_width, small_height) = (
                before.source.image(index).size,
                after.source.image(index).size,
            )
            assert max(small_width, small_height) == 200 and abs(small_width / small_height - width / height) < 0.02
    again = run_script("prepare_data.py", "--data", jpeg_set, "--out", out, check=False)
    assert again.returncode != 0 and "does not exist yet" in again.stderr


def test_a_proxy_runs_share_of_fast_data_stays_on_the_fast_path(jpeg_set, tmp_path):
    fast = views.fast_splits(load_data(str(jpeg_set), image_size=32), "auto", tmp_path, workers=0)
    share = views.fast_splits(data_subset(fast, 0.5, seed=0), "auto", tmp_path, workers=0)
    assert isinstance(share.train, views.CropView) and isinstance(share.val, views.StoredView)
    (pixels, _), _, _ = share.train[(0, 1)]
    assert pixels.shape == (32, 32, 3) and share.val[0][0].shape == (32, 32, 3)


# ----------------------------------------------------------------------------------------------------------------------
# Runs on the fast path


def jpeg_run(out, jpeg_set, cache, *extra, epochs=2):
    return train_args(out, "--image-size", 32, "--student", "resnet10t", "--batch-size", 3, "--cache-dir", cache,
                      "--loader", "uint8", *extra, data=jpeg_set, epochs=epochs)  # fmt: skip


@pytest.mark.slow
def test_a_run_on_the_fast_path_resumes_identically(tmp_path, jpeg_set, tiny_teacher, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))  # the scripts' Arrow cache, in the test's folder
    flags = ("--teacher-checkpoint", tiny_teacher, "--label-weight", 0.5)
    whole, killed, epochs = tmp_path / "whole", tmp_path / "killed", 5
    run_script(*jpeg_run(whole, jpeg_set, tmp_path / "cache", *flags, epochs=epochs))
    kill_part_way(jpeg_run(killed, jpeg_set, tmp_path / "cache", *flags, epochs=epochs), killed, 2, epochs)
    run_script("train_student.py", "--resume", killed)
    assert comparable(killed) == comparable(whole)


@pytest.mark.slow
def test_the_teacher_view_store_of_the_fast_path_is_its_own(tmp_path, jpeg_set, tiny_teacher, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    flags = ("--teacher-checkpoint", tiny_teacher, "--label-weight", 0.3, "--teacher-logits", "replay")
    cache = tmp_path / "cache"
    run_script(*jpeg_run(tmp_path / "pil", jpeg_set, cache, *flags, "--loader", "pil", epochs=1))
    run_script(*jpeg_run(tmp_path / "fast", jpeg_set, cache, *flags, epochs=1))
    stores = sorted(cache.glob("teacher-views-*"))
    assert len(stores) == 2  # a store filled on the PIL views is never replayed on the uint8 views
    transforms_ = {json.loads((store / "key.json").read_text())["transform"] for store in stores}
    assert len(transforms_) == 2 and any(t.startswith("CropToUint8") for t in transforms_)
