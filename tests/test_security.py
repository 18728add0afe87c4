"""Files from elsewhere (docs/security.md): every entry point that reads a checkpoint, an agent or a cache is handed a
file whose unpickling would create a marker file; the marker never appears and the command ends in one line. A
checkpoint written before the rule still loads (numpy arrays) or names its explicit conversion; an export of a run
on a local folder publishes no path of this machine."""

import base64
import io
import json
import pickle
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3.common.running_mean_std import RunningMeanStd

from common import files
from common.errors import UserError
from conftest import HOME, run_script, train_args, write_image_folder
from training.logit_stores import TeacherViewStore, cached_logits


class Payload:
    """What a booby-trapped file carries: unpickled in full, it creates `marker` (open(marker, "w"))."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def trapped_checkpoint(path: Path, marker: Path, **keys) -> Path:
    """A torch checkpoint with the keys a run's checkpoint has, and the payload beside them."""
    torch.save({"model": "resnet10t", "state_dict": {}, "class_names": ["n01440764"], "config": {}, **keys,
                "payload": Payload(marker)}, path)  # fmt: skip
    return path


def trapped_agent(path: Path, marker: Path) -> Path:
    """An agent.zip as stable-baselines3 writes it, with the RL script's spaces described in `data`, the payload as
    the observation space's cloudpickled entry and as policy.pth."""
    serialized = base64.b64encode(pickle.dumps(Payload(marker))).decode()
    data = {
        "observation_space": {":type:": "<class 'gymnasium.spaces.box.Box'>", ":serialized:": serialized,
                              "_shape": [12], "dtype": "float32"},
        "action_space": {":type:": "<class 'gymnasium.spaces.discrete.Discrete'>", "_shape": [], "n": "11",
                         ":serialized:": serialized},
    }  # fmt: skip
    policy = io.BytesIO()
    torch.save({"payload": Payload(marker)}, policy)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data", json.dumps(data))
        archive.writestr("policy.pth", policy.getvalue())
    return path


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_the_traps_are_real(tmp_path):
    """Read as before (torch.load(weights_only=False), stable-baselines3's PPO.load), each file runs its payload."""
    from stable_baselines3.common.save_util import load_from_zip_file

    marker = tmp_path / "ran"
    torch.load(trapped_checkpoint(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(Exception):  # noqa: B017 (the payload runs, then the load fails on what it returned)
        load_from_zip_file(trapped_agent(tmp_path / "evil.zip", marker), device="cpu")
    assert marker.exists()


@pytest.fixture(scope="module")
def finished_run(tiny_teacher, tmp_path_factory) -> Path:
    return tiny_teacher.parent


def planted(finished_run: Path, tmp_path: Path, name: str, marker: Path) -> Path:
    """A copy of a finished run folder whose `name` (best.pt or last.pt) is booby-trapped."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns("tb", ".lock"))
    trapped_checkpoint(run / name, marker, image_size=32, epoch=1, data="")
    return run


# entry point -> its command line, given the planted run folder, the trapped file and a fresh --out
CHECKPOINT_READERS = {
    "--teacher-checkpoint": lambda run, evil, out: train_args(out, "--teacher-checkpoint", evil, "--label-weight",
                                                              "0.5"),
    "--teacher-weights": lambda run, evil, out: train_args(out, "--teacher", "resnet10t", "--teacher-weights", evil,
                                                           "--label-weight", "0.5"),
    "--resume": lambda run, evil, out: ["train_student.py", "--resume", run],
    "evaluate.py": lambda run, evil, out: ["evaluate.py", run, "--no-teacher", "--device", "cpu"],
    "export.py": lambda run, evil, out: ["export.py", run, "--out", out],
}  # fmt: skip


@pytest.mark.parametrize("case", CHECKPOINT_READERS)
def test_a_booby_trapped_checkpoint_runs_nothing_and_ends_in_one_line(case, finished_run, tmp_path):
    marker = tmp_path / "ran"
    run = planted(finished_run, tmp_path, "last.pt" if case == "--resume" else "best.pt", marker)
    evil = trapped_checkpoint(tmp_path / "evil.pt", marker)
    line = one_line(run_script(*CHECKPOINT_READERS[case](run, evil, tmp_path / "out"), check=False))
    assert not marker.exists(), case
    assert "pickled objects" in line and "run code" in line, line


def test_a_booby_trapped_agent_runs_nothing_and_ends_in_one_line(tiny_teacher, tmp_path):
    marker = tmp_path / "ran"
    policy = trapped_agent(tmp_path / "agent.zip", marker)
    argv = train_args(tmp_path / "rl", "--policy", policy, "--teacher-checkpoint", tiny_teacher, "--cache-dir",
                      tmp_path / "cache", script="train_student_rl.py")  # fmt: skip
    line = one_line(run_script(*argv, check=False))
    assert not marker.exists()
    assert "policy.pth holds pickled objects" in line, line


def test_a_booby_trapped_teacher_cache_is_recomputed_never_run(tmp_path):
    """The teacher-logit cache and the teacher-view store are read as tensors / numpy without pickles: a planted file
    is not a cache hit, it is computed again (and the logit cache replaced)."""
    marker, parts, shape = tmp_path / "ran", {"teacher": "t", "data": "d"}, (3, 2)
    path = tmp_path / f"teacher-logits-{files.cache_key(parts)}.pt"
    torch.save(Payload(marker), path)
    logits, cached = cached_logits(tmp_path, parts, lambda: torch.ones(shape), shape)
    assert not cached and torch.equal(logits, torch.ones(shape)) and not marker.exists()
    assert torch.equal(torch.load(path, weights_only=True), torch.ones(shape, dtype=torch.float16))
    store = TeacherViewStore(tmp_path, parts, shape)
    np.save(store.path(1), np.array([Payload(marker)], dtype=object), allow_pickle=True)
    assert store.open(store.path(1), mode="r") is None and not marker.exists()


def old_style_checkpoint(path: Path, **extra) -> Path:
    """As train_student.py wrote last.pt before checkpoints held only tensors: numpy arrays in the curriculum."""
    curriculum = {"scores": np.arange(4, dtype=np.float32), "history": {"epoch_0": np.zeros(4, np.float16)},
                  "coverage": np.ones(4, np.int64)}  # fmt: skip
    torch.save({"model": "resnet10t", "state_dict": {"w": torch.ones(2)}, "class_names": ["n01440764"],
                "curriculum": curriculum, **extra}, path)  # fmt: skip
    return path


def test_a_checkpoint_of_before_is_converted_on_read_or_names_its_conversion(tmp_path):
    arrays = files.load_checkpoint(old_style_checkpoint(tmp_path / "arrays.pt"))["curriculum"]
    assert torch.equal(arrays["scores"], torch.arange(4, dtype=torch.float32))
    assert arrays["history"]["epoch_0"].dtype == torch.float16 and arrays["coverage"].dtype == torch.int64
    assert np.array_equal(files.arrays(arrays)["scores"], np.arange(4))  # what Curriculum.load_state_dict gets

    scale = RunningMeanStd(shape=())
    scale.update(np.array([1.0, 3.0]))
    old = old_style_checkpoint(tmp_path / "agent.pt", agent={"reward_scale": scale})
    with pytest.raises(UserError) as refused:
        files.load_checkpoint(old)
    assert f"python scripts/convert_checkpoint.py {old}" in str(refused.value)
    assert "RunningMeanStd" in str(refused.value) and "\n" not in str(refused.value)
    converted = run_script("scripts/convert_checkpoint.py", old)
    assert converted.stdout.startswith(f"converted {old}")
    saved = files.load_checkpoint(old)["agent"]["reward_scale"]
    assert saved == {"mean": float(scale.mean), "var": float(scale.var), "count": float(scale.count)}


def test_a_checkpoint_holds_tensors_and_plain_types_only(tmp_path):
    files.save_checkpoint(tmp_path / "a.pt", {"model": "m", "state_dict": {}, "scores": np.ones(3, np.float32),
                                             "count": np.int64(3)})  # fmt: skip
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "a.pt") == []
    with pytest.raises(TypeError):
        files.save_checkpoint(tmp_path / "b.pt", {"model": "m", "state_dict": {}, "where": Path("/somewhere")})
    assert not (tmp_path / "b.pt").exists()


def strings(value) -> list[str]:
    if isinstance(value, dict):
        return [text for item in value.values() for text in strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in strings(item)]
    return [value] if isinstance(value, str) else []


def test_an_export_of_a_run_on_a_local_folder_names_no_local_path(tiny_teacher, tmp_path):
    """The data under the (temporary) home, the teacher and cache by absolute paths: the card and export.json name
    the folder, the run and the teacher's file, never where they are."""
    data = write_image_folder(HOME / "datasets" / "my-birds", classes=["n01440764", "n02110185"])  # the teacher's
    run = tmp_path / "run"
    try:
        run_script(
            *train_args(
                run,
                "--student",
                "resnet10t",
                "--image-size",
                "32",
                "--teacher-checkpoint",
                tiny_teacher,
                "--label-weight",
                "0.5",
                "--cache-dir",
                tmp_path / "cache",
                data=data,
            )
        )
        run_script("export.py", run, "--format", "timm")  # fmt: skip
    finally:
        shutil.rmtree(HOME / "datasets")
    card, record = (run / "export" / "README.md").read_text(), json.loads((run / "export" / "export.json").read_text())
    local = [str(tmp_path), str(HOME), tempfile.gettempdir(), str(Path.home())]
    for text in [card, *strings(record)]:
        assert not any(place in text for place in local), text
    assert record["data"] == "my-birds" and record["source"]["run"] == "run" and record["config"]["out"] == "run"
    assert record["config"]["teacher_checkpoint"] == "PATH/TO/best.pt"
    assert "- Data: `my-birds`" in card and "--out run" in record["command"]
    assert json.loads((run / "config.json").read_text())["data"] == str(data)  # the local record keeps the path


def test_a_checkpoint_without_what_its_reader_needs_is_one_line(tmp_path):
    """The top-level keys of a checkpoint but not the rest: one line naming the missing keys, not a KeyError later."""
    path = tmp_path / "best.pt"
    files.save_checkpoint(path, {"model": "resnet10t", "state_dict": {}, "config": {}})
    for needs, missing in ((files.MODEL_KEYS, "class_names"), (files.RUN_KEYS, "image_size"),
                           (files.RESUME_KEYS, "data")):  # fmt: skip
        with pytest.raises(UserError) as refused:
            files.load_checkpoint(path, needs)
        assert missing in str(refused.value) and "\n" not in str(refused.value)


def test_the_conversion_reads_through_an_allow_list_and_refuses_a_trap(tmp_path):
    """scripts/convert_checkpoint.py reads old checkpoints with weights_only=True and an allow-list too: a booby-trapped
    file is refused in one line, its marker never created, the file left as it was."""
    marker = tmp_path / "marker"
    trapped = trapped_checkpoint(tmp_path / "evil.pt", marker)
    before = trapped.read_bytes()
    line = one_line(run_script("scripts/convert_checkpoint.py", trapped, check=False))
    assert "left as it was" in line and not marker.exists() and trapped.read_bytes() == before
