"""--teacher-logits replay: the teacher's logits on the augmented views, stored by the first run and replayed."""

import csv
import subprocess
import sys

import numpy as np
import pytest
import torch

import models
from common.files import load_checkpoint
from conftest import ROOT, TINY, run_script, train_args
from data.splits import load_data
from training.logit_stores import EpochViews, TeacherViewStore

CPU = torch.device("cpu")


def metrics(folder) -> list[dict]:
    """metrics.csv without its wall-time column."""
    with open(folder / "metrics.csv") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def store_folders(cache) -> list:
    return sorted(cache.glob("teacher-views-*"))


def stored_rows(cache, epoch: int) -> np.ndarray:
    (folder,) = store_folders(cache)
    return np.load(folder / f"epoch-{epoch:04d}.npy")[:, -1] == 1


# ----------------------------------------------------------------------------------------------------------------------
# The store itself


def test_store_round_trip_rounds_through_fp16_and_serves_only_whole_batches(tmp_path):
    store = TeacherViewStore(tmp_path, {"teacher": "t"}, shape=(4, 2))
    views = EpochViews(store, 1, CPU)
    assert views.lookup(torch.tensor([0, 1]), torch.tensor([0, 1])) is None  # nothing stored yet
    fresh = torch.tensor([[1.0001, -2.0], [3.0, 4.0]])
    used = views.record(torch.tensor([0, 1]), fresh)
    assert torch.equal(used, torch.tensor([[1.0, -2.0], [3.0, 4.0]]))  # 1.0001 is 1.0 in fp16: trained as stored
    assert views.save() == 2

    again = EpochViews(store, 1, CPU)
    assert again.stored.tolist() == [True, True, False, False]
    replayed = again.lookup(torch.tensor([1, 0]), torch.tensor([1, 0]))
    assert torch.equal(replayed, torch.tensor([[3.0, 4.0], [1.0, -2.0]]))
    assert again.lookup(torch.tensor([1, 2]), torch.tensor([1, 2])) is None  # one view missing: the teacher runs
    assert EpochViews(store, 2, CPU).stored.sum() == 0  # epochs are separate views


def test_a_batch_mixing_stored_and_new_views_keeps_the_stored_logits(tmp_path):
    store = TeacherViewStore(tmp_path, {"teacher": "t"}, shape=(3, 2))
    first = EpochViews(store, 1, CPU)
    first.record(torch.tensor([0]), torch.tensor([[5.0, 6.0]]))
    first.save()
    second = EpochViews(store, 1, CPU)
    used = second.record(torch.tensor([0, 2]), torch.tensor([[5.5, 6.5], [7.0, 8.0]]))
    assert torch.equal(used, torch.tensor([[5.0, 6.0], [7.0, 8.0]]))
    assert second.save() == 1  # only the new view is written
    assert EpochViews(store, 1, CPU).stored.tolist() == [True, False, True]


def test_damaged_files_and_non_finite_rows_are_recomputed_not_trusted(tmp_path, capsys):
    store = TeacherViewStore(tmp_path, {"teacher": "t"}, shape=(3, 2))
    views = EpochViews(store, 1, CPU)
    views.record(torch.tensor([0, 1]), torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    views.save()
    array = np.load(store.path(1), mmap_mode="r+")
    array[1, 0] = np.nan  # a stored row gone bad
    array.flush()
    assert EpochViews(store, 1, CPU).stored.tolist() == [True, False, False]

    store.path(1).write_bytes(store.path(1).read_bytes()[:100])  # truncated
    views = EpochViews(store, 1, CPU)
    assert views.stored.sum() == 0
    views.record(torch.tensor([2]), torch.tensor([[9.0, 9.0]]))
    assert views.save() == 1  # the damaged file is replaced by a fresh one
    assert "replaced the damaged" in capsys.readouterr().err
    assert EpochViews(store, 1, CPU).stored.tolist() == [False, False, True]
    assert not list(store.folder.glob(".*.tmp"))


def test_a_view_drawn_in_two_processes_is_stored_once_not_summed(tmp_path):
    """prioritised draws with replacement: both processes may train on one view; save() sums their rows across
    processes (here a stand-in sum: the other process holds the same rows) and must store the logits, not twice them."""
    store = TeacherViewStore(tmp_path, {"teacher": "t"}, shape=(3, 2))
    views = EpochViews(store, 1, CPU)
    logits = torch.tensor([[1.5, -2.0]])
    views.record(torch.tensor([1]), logits)
    assert views.save(reduce=lambda tensor: 2 * tensor) == 1
    stored, which = store.read(1)
    assert which.tolist() == [False, True, False]
    np.testing.assert_array_equal(stored[1], logits[0].half().numpy())


def test_another_key_is_another_store(tmp_path):
    one = TeacherViewStore(tmp_path, {"augment_seed": 0}, shape=(3, 2))
    other = TeacherViewStore(tmp_path, {"augment_seed": 1}, shape=(3, 2))
    assert one.folder != other.folder and len(store_folders(tmp_path)) == 2


# ----------------------------------------------------------------------------------------------------------------------
# Runs


@pytest.fixture(scope="module")
def replay_args(tiny_teacher):
    def args(out, cache, *extra, epochs=2):
        return train_args(out, "--teacher-checkpoint", tiny_teacher, "--label-weight", 0.3, "--teacher-logits",
                          "replay", "--cache-dir", cache, "--batch-size", 16, *extra, epochs=epochs)  # fmt: skip

    return args


@pytest.mark.slow
def test_a_replaying_run_trains_exactly_as_the_run_that_filled_the_store(tmp_path, replay_args):
    cache = tmp_path / "cache"
    curriculum = ("--curriculum", "adaptive", "--fraction", "0.6", "--rescore-every", "1")
    run_script(*replay_args(tmp_path / "fill", cache, *curriculum))
    selected = stored_rows(cache, 1)
    assert 0 < selected.sum() < len(selected)  # a curriculum run stores only the views it trained on

    (folder,) = store_folders(cache)
    before = {path.name: path.read_bytes() for path in folder.glob("epoch-*.npy")}
    run_script(*replay_args(tmp_path / "replay", cache, *curriculum))
    assert metrics(tmp_path / "replay") == metrics(tmp_path / "fill")  # selections, losses, accuracies: identical
    after = {path.name: path.read_bytes() for path in folder.glob("epoch-*.npy")}
    assert after == before  # every view was replayed: nothing new to store

    array = np.load(folder / "epoch-0001.npy", mmap_mode="r+")  # the replay really reads the store:
    array[selected, 0] += 3  # a changed stored logit changes what is trained
    array.flush()
    run_script(*replay_args(tmp_path / "tampered", cache, *curriculum))
    assert metrics(tmp_path / "tampered")[0]["train_loss"] != metrics(tmp_path / "fill")[0]["train_loss"]

    run_script(*replay_args(tmp_path / "full", cache))  # a later full run fills in the rest
    assert stored_rows(cache, 1).all() and stored_rows(cache, 2).all()


@pytest.mark.slow
def test_the_store_holds_the_teachers_logits_on_each_epochs_own_view(tmp_path, replay_args, tiny_teacher):
    cache = tmp_path / "cache"
    run_script(*replay_args(tmp_path / "fill", cache, "--augment-seed", 3))
    teacher = models.model_from_checkpoint(load_checkpoint(tiny_teacher)).eval()
    view = load_data(TINY, seed=3).train  # the training view, augmented from (augment seed, epoch, index)
    (folder,) = store_folders(cache)
    for epoch in (1, 2):
        stored = torch.from_numpy(np.load(folder / f"epoch-{epoch:04d}.npy")[:, :-1].astype(np.float32))
        for index in (0, 17, 95):
            with torch.no_grad():
                logits = teacher(view[(index, epoch)][0][None])[0]
            assert torch.allclose(stored[index], logits.half().float(), rtol=1e-3, atol=1e-3), (epoch, index)
    with torch.no_grad():  # and not the logits of another epoch's view of that sample
        other = teacher(view[(17, 2)][0][None])[0]
    stored = np.load(folder / "epoch-0001.npy")[17, :-1].astype(np.float32)
    assert not torch.allclose(torch.from_numpy(stored), other, rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_seeds_that_share_an_augment_seed_share_the_store(tmp_path, replay_args):
    cache = tmp_path / "cache"
    run_script(*replay_args(tmp_path / "s0", cache, "--seed", 0, epochs=1))
    run_script(*replay_args(tmp_path / "s1", cache, "--seed", 1, "--augment-seed", 0, epochs=1))
    assert len(store_folders(cache)) == 1
    run_script(*replay_args(tmp_path / "s2", cache, "--seed", 2, epochs=1))  # by default a seed has its own views
    assert len(store_folders(cache)) == 2


@pytest.mark.slow
def test_two_runs_filling_one_store_at_once(tmp_path, replay_args):
    cache = tmp_path / "cache"
    commands = [[sys.executable, *replay_args(tmp_path / f"run{k}", cache, epochs=1)] for k in range(2)]
    processes = [subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True) for command in commands]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    assert metrics(tmp_path / "run0") == metrics(tmp_path / "run1")
    assert stored_rows(cache, 1).all()
