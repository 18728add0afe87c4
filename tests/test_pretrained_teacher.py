"""The synthetic analogue of an ImageNet teacher: a teacher trained once on a wider synthetic set (more classes,
named by WordNet ids), cached by everything that defines it, and sliced to the students' classes by WordNet id."""

import numpy as np
import pytest
import torch

import models
import pretrain_teacher
from common import cli, files
from common.errors import UserError
from conftest import TINY, train_args
from data import splits as data
from training.config import TrainConfig
from training.teacher import load_teacher

# TINY's 4 classes are ImageNet indices 0, 250, 500, 750; these 2 are 0 and 500: a subset, in another order of labels
SUBSET = "synthetic:classes=2,train=16,val=8,test=8,size=32,seed=0"


def test_a_class_looks_the_same_in_every_synthetic_set_that_names_it():
    wide, narrow = data.load_data(TINY), data.load_data(SUBSET)
    assert narrow.class_names == [wide.class_names[0], wide.class_names[2]]
    wide_source, narrow_source = wide.train.source, narrow.train.source
    np.testing.assert_array_equal(narrow_source.colours, wide_source.colours[[0, 2]])
    np.testing.assert_array_equal(narrow_source.angles, wide_source.angles[[0, 2]])
    # ... while the samples differ: a pretraining set never holds the students' images
    assert not np.array_equal(narrow_source.hardness[:8], wide_source.hardness[:8])


@pytest.mark.slow
def test_wider_synthetic_teacher_is_sliced_by_wordnet_id(tiny_teacher):
    subset = data.load_data(SUBSET)
    config = cli.parse_config(TrainConfig, ["--teacher-checkpoint", str(tiny_teacher)])
    teacher = load_teacher(subset, config.teacher_spec())
    assert isinstance(teacher, models.SlicedTeacher)
    full = models.model_from_checkpoint(files.load_checkpoint(tiny_teacher)).eval()
    images = torch.stack([subset.test[i][0] for i in range(4)])
    with torch.no_grad():
        torch.testing.assert_close(teacher(images), full(images)[:, [0, 2]])
    same = load_teacher(data.load_data(TINY), config.teacher_spec())  # its own classes: no slicing
    assert not isinstance(same, models.SlicedTeacher)


def pretrain(cache, *extra, epochs=1):
    argv = train_args("no-out", "--student", "resnet10t", "--label-weight", 1, "--cache-dir", cache, *extra,
                      epochs=epochs)[1:]  # fmt: skip
    out = argv.index("--out")
    return pretrain_teacher.pretrained_teacher(argv[:out] + argv[out + 2 :])  # the cache picks the folder: no --out


@pytest.mark.slow
def test_pretrained_teacher_is_cached_and_retrained_when_its_key_changes(tmp_path):
    path, reused = pretrain(tmp_path)
    assert not reused and path.is_file() and path.parent.parent == tmp_path / "teachers"
    stamp = path.stat().st_mtime_ns
    again, reused = pretrain(tmp_path, "--workers", 1)  # where and how fast it runs is not part of the key
    assert reused and again == path and path.stat().st_mtime_ns == stamp
    longer, reused = pretrain(tmp_path, epochs=2)
    assert not reused and longer != path
    jittered, reused = pretrain(tmp_path, "--data", TINY + ",jitter=0.3")
    assert not reused and jittered not in (path, longer)
    assert len(list((tmp_path / "teachers").iterdir())) == 3


@pytest.mark.slow
def test_cut_off_pretraining_is_redone(tmp_path):
    path, _ = pretrain(tmp_path)
    (path.parent / "results.json").unlink()  # as if killed before the end
    again, reused = pretrain(tmp_path)
    assert not reused and again == path and (path.parent / "results.json").is_file()


@pytest.mark.parametrize("option", ["jitter=x", "jitter=0.3.1"])
def test_bad_jitter_is_a_user_error(option):
    with pytest.raises(UserError, match="synthetic"):
        data.load_data(f"{TINY},{option}")
