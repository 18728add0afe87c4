"""Every bad input of docs/errors.md's "Bad input" table (and of issue 10), each its own process: one line `error: ...`,
exit code 2, no traceback, and an earlier run's files byte-identical afterwards.

Each case runs in a process forked from the tests' script server (conftest.run_script), which imported torch, timm and
stable-baselines3 once: the script runs as `__main__` exactly as `python SCRIPT ARGS` would. Cases that need another
environment run as plain subprocesses.
"""

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import PPO

import models
from common import run_folder as bookkeeping
from common.files import load_checkpoint, save_checkpoint
from conftest import ROOT, run_script, script_server, train_args, write_image_folder
from data.synthetic import synthetic_class_names


@dataclass
class Files:
    """Everything the cases point at, made once."""

    root: Path
    earlier: Path = None  # a finished run that no case may change
    paths: dict = field(default_factory=dict)

    def __getattr__(self, name):
        return self.paths[name]


def snapshot(folder: Path) -> dict:
    files = sorted(path for path in folder.rglob("*") if path.is_file() and path.name != bookkeeping.LOCK_FILE)
    return {str(path.relative_to(folder)): path.read_bytes() for path in files}  # the lock file names its last user


class ToyEnv(gym.Env):
    """The RL script's observation space with a discrete action: an agent.zip of another action space."""

    observation_space = gym.spaces.Box(-1.0, 1.0, shape=(12,), dtype=np.float32)
    action_space = gym.spaces.Discrete(5)

    def reset(self, seed=None, options=None):
        return np.zeros(12, dtype=np.float32), {}

    def step(self, action):
        return np.zeros(12, dtype=np.float32), 0.0, True, False, {}


def tiny_checkpoint(path: Path, name: str, arch: str, classes: int) -> Path:
    state = models.create_model(arch, classes).state_dict()
    save_checkpoint(path, {"model": name, "class_names": synthetic_class_names(classes), "state_dict": state})
    return path


def copy_run(source: Path, target: Path) -> Path:
    for name, content in snapshot(source).items():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_bytes(content)
    return target


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Files:
    root = tmp_path_factory.mktemp("bad-input")
    made = Files(root)
    made.earlier = root / "earlier"
    earlier = run_script(*train_args(made.earlier, "--label-weight", 1, "--student", "resnet10t"), check=False)
    code, err = earlier.returncode, earlier.stderr
    assert code == 0, err
    p = made.paths
    p["file"] = root / "file.txt"
    p["file"].write_text("not a folder\n")
    (root / "empty").mkdir()
    p["empty"] = root / "empty"
    p["partial"] = write_image_folder(root / "partial", splits=("train", "val"))
    p["unknown_class"] = write_image_folder(root / "unknown", classes=["n01440764", "n99999999"])
    p["corrupt_image"] = write_image_folder(root / "corrupt")
    (p["corrupt_image"] / "train" / "n01440764" / "img1.jpg").write_bytes(b"this is not a jpeg")
    p["empty_class"] = write_image_folder(root / "empty-class")
    for image in (p["empty_class"] / "train" / "n01440764").iterdir():
        image.unlink()
    p["teacher_3_classes"] = tiny_checkpoint(root / "three.pt", "resnet10t", "resnet10t", 3)
    p["teacher_wrong_name"] = tiny_checkpoint(root / "wrong-name.pt", "resnet18", "resnet10t", 4)
    p["discrete_agent"] = root / "discrete.zip"
    PPO("MlpPolicy", ToyEnv(), n_steps=8, batch_size=8, device="cpu").save(p["discrete_agent"])
    changed = copy_run(made.earlier, root / "changed-data")
    checkpoint = load_checkpoint(changed / "last.pt")
    save_checkpoint(changed / "last.pt", {**checkpoint, "data": '{"synthetic": "something else"}'})
    p["changed_data"] = changed
    p["corrupt_config"] = copy_run(made.earlier, root / "corrupt-config")
    (p["corrupt_config"] / "config.json").write_text('{"script": "train_student.py", "data": ')
    p["no_config"] = copy_run(made.earlier, root / "no-config")
    (p["no_config"] / "config.json").unlink()
    p["dead_attempt"] = copy_run(made.earlier, root / "dead-attempt")  # died before its first epoch was saved
    for name in ("last.pt", "best.pt", "results.json"):
        (p["dead_attempt"] / name).unlink()
    p["truncated_metrics"] = copy_run(made.earlier, root / "truncated-metrics")
    cut_metrics_row(p["truncated_metrics"] / "metrics.csv")
    return made


def cut_metrics_row(path: Path) -> None:
    """Cut the last row of a metrics.csv short after its val_acc cell, as a write stopped mid-row leaves it: fewer
    cells than the header names whatever the values and their lengths (a fixed count of characters could remove
    only part of the last cell, which still parses)."""
    header, *rows = path.read_text().splitlines()
    columns = header.split(",")
    assert rows and columns.index("val_acc") < len(columns) - 1, header
    cells = rows[-1].split(",")[: columns.index("val_acc") + 1]
    path.write_text("\n".join([header, *rows[:-1], ",".join(cells)]))


def student(out, *flags, **options):
    return train_args(out, *flags, **options)


def rl(out, *flags, **options):
    return train_args(out, *flags, script="train_student_rl.py", **options)


KD = ("--label-weight", "0.5", "--student", "resnet10t")
NO_HUB = {"HF_ENDPOINT": "http://127.0.0.1:9"}  # a closed port: the hub cannot be reached

# (id, argv(files, fresh out folder), words the message must hold, environment of a plain subprocess or None)
CASES = [
    # the table of docs/errors.md
    ("data-folder-missing", lambda f, o: student(o, data="/no/such/folder"), "check the path", None),
    ("data-folder-malformed", lambda f, o: student(o, data=f.empty), "train split is missing", None),
    ("data-split-missing", lambda f, o: student(o, data=f.partial), "test split is missing", None),
    ("data-unknown-value", lambda f, o: student(o, data="nonsense"), "neither a folder", None),
    ("class-not-imagenet", lambda f, o: student(o, "--teacher", "resnet18", *KD[:2], data=f.unknown_class),
     "--teacher-checkpoint", None),
    ("label-weight-out-of-range", lambda f, o: student(o, "--label-weight", "1.5"), "[0, 1]", None),
    ("temperature-zero", lambda f, o: student(o, "--temperature", "0"), "--temperature must be > 0", None),
    ("fraction-out-of-range", lambda f, o: student(o, "--fraction", "1.5"), "--fraction must lie in (0, 1]", None),
    ("label-noise-out-of-range", lambda f, o: student(o, "--label-noise", "1"), "--label-noise must lie in [0, 1)",
     None),
    ("teacher-other-class-count", lambda f, o: student(o, "--teacher-checkpoint", f.teacher_3_classes, *KD),
     ("not among the 3 classes", "--teacher-checkpoint"), None),
    ("corrupt-image-in-worker", lambda f, o: student(o, "--label-weight", "1", "--student", "resnet10t",
     "--workers", "1", data=f.corrupt_image), ("img1.jpg", "delete or replace"), None),
    ("no-network-for-weights", lambda f, o: student(o, "--teacher", "resnet18", *KD[:2]),
     ("--teacher-weights", "hf download timm/resnet18", "--teacher-checkpoint"), NO_HUB),
    ("no-network-for-data", lambda f, o: student(o, data="timm/mini-imagenet"),
     ("hf download timm/mini-imagenet --repo-type dataset", "--data DIR", "--data synthetic"), NO_HUB),
    ("existing-run-folder", lambda f, o: student(f.earlier), "--overwrite", None),
    ("resume-nothing-to-resume", lambda f, o: ["train_student.py", "--resume", f.dead_attempt],
     ("nothing to resume", "without --resume"), None),
    ("resume-other-flags", lambda f, o: ["train_student.py", "--resume", f.earlier, "--lr", "0.5"], "--lr differ",
     None),
    ("resume-changed-data", lambda f, o: ["train_student.py", "--resume", f.changed_data], "changed", None),
    ("nan-loss", lambda f, o: student(o, "--label-weight", "1", "--student", "resnet10t", "--lr", "1e30"),
     "at epoch 1, batch", None),
    ("policy-other-action-space", lambda f, o: rl(o, "--policy", f.discrete_agent, "--teacher-checkpoint",
     f.teacher_3_classes, data="synthetic:classes=3,train=48,val=16,test=16"), "--action",
     None),
    # issue 10
    ("seed-negative", lambda f, o: student(o, "--seed", "-1"), "--seed must lie in", None),
    ("augment-seed-negative", lambda f, o: student(o, "--augment-seed", "-1"), "--augment-seed must lie in", None),
    ("seed-not-an-int", lambda f, o: student(o, "--seed", "1e23"), "see --help", None),
    ("epochs-not-an-int", lambda f, o: student(o, "--epochs", "abc"), "see --help", None),
    ("unknown-flag", lambda f, o: student(o, "--learning-rate", "0.1"), "see --help", None),
    ("batch-size-one", lambda f, o: student(o, "--batch-size", "1"), "--batch-size must be at least 2", None),
    ("fraction-selects-one", lambda f, o: student(o, "--curriculum", "random_subset", "--fraction", "0.01"),
     "raise --fraction", None),
    ("fraction-selects-none", lambda f, o: student(o, "--curriculum", "random_subset", "--fraction", "0.001"),
     "raise --fraction", None),
    ("agent-lr-negative", lambda f, o: rl(o, "--agent-lr", "-1"), "--agent-lr must be > 0", None),
    ("agent-epochs-zero", lambda f, o: rl(o, "--agent-epochs", "0"), "--agent-epochs must be >= 1", None),
    ("gamma-above-one", lambda f, o: rl(o, "--gamma", "5"), "--gamma must lie in (0, 1]", None),
    ("policy-not-a-zip", lambda f, o: rl(o, "--policy", f.file), "not a zip", None),
    ("teacher-name-does-not-fit-weights", lambda f, o: student(o, "--teacher-checkpoint", f.teacher_wrong_name, *KD),
     "weights of another", None),
    ("empty-class-folder", lambda f, o: student(o, data=f.empty_class), "holds no images", None),
    ("out-under-a-file", lambda f, o: student(f.file / "run"), "under the file", None),
    ("out-is-a-file", lambda f, o: student(f.file), "is a file", None),
    ("cache-dir-under-a-file", lambda f, o: student(o, "--curriculum", "adaptive", "--cache-dir", f.file / "cache",
     "--teacher-checkpoint", f.teacher_3_classes), "--cache-dir", None),
    ("overwrite-then-bad-cache-dir", lambda f, o: student(f.earlier, "--overwrite", "--curriculum", "adaptive",
     "--cache-dir", f.file / "cache", "--teacher-checkpoint", f.teacher_3_classes), "--cache-dir", None),
    ("overwrite-then-bad-data", lambda f, o: student(f.earlier, "--overwrite", data=f.partial), "test split", None),
    ("overwrite-then-unknown-student", lambda f, o: rl(f.earlier, "--overwrite", "--student", "no_such_net"),
     "timm has no model", None),
    ("resume-corrupt-config", lambda f, o: ["train_student.py", "--resume", f.corrupt_config], "not a run's config",
     None),
    ("resume-no-config", lambda f, o: ["train_student.py", "--resume", f.no_config], "no config.json", None),
    ("evaluate-corrupt-config", lambda f, o: ["evaluate.py", f.corrupt_config, "--no-teacher"], "not a run's config",
     None),
    ("evaluate-report-truncated-metrics", lambda f, o: ["evaluate.py", f.truncated_metrics, "--no-teacher",
     "--device", "cpu", "--workers", "0", "--report", o / "report"], "cut short", None),
    ("evaluate-json-unwritable", lambda f, o: ["evaluate.py", f.earlier, "--json", f.file / "t.json"],
     "under the file", None),
    ("evaluate-report-unwritable", lambda f, o: ["evaluate.py", f.earlier, "--report", f.file / "report"],
     "under the file", None),
    ("evaluate-bad-flag-value", lambda f, o: ["evaluate.py", f.earlier, "--batch-size", "x"], "see --help", None),
    # issue 14
    ("abbreviated-flag", lambda f, o: student(o, "--epoch", "1"), ("unrecognized arguments: --epoch", "see --help"),
     None),
    ("flag-not-for-the-rl-script", lambda f, o: rl(o, "--pacing", "linear"),
     "--pacing does not apply to train_student_rl.py", None),
    ("flag-not-for-pretrain-teacher", lambda f, o: ["pretrain_teacher.py", "--out", o],
     "--out does not apply to pretrain_teacher.py", None),
    ("evaluate-no-run-folder", lambda f, o: ["evaluate.py", f.empty, "--no-teacher"], "no finished run among", None),
]  # fmt: skip
STARTS_A_RUN = {"nan-loss", "corrupt-image-in-worker"}  # refused only once training ran: their new folder may exist


@pytest.mark.slow
@pytest.mark.parametrize(("case", "argv", "expected", "env"), CASES, ids=[case[0] for case in CASES])
def test_bad_input_ends_in_one_line(files, tmp_path, case, argv, expected, env):
    before = snapshot(files.earlier)
    out = tmp_path / "new-run"
    args = argv(files, out)
    if env is None:
        forked = script_server().count
        result = run_script(*args, check=False)
        code, err = result.returncode, result.stderr
        # forked from the script server, as the module says: a fresh interpreter per case costs minutes in all
        assert script_server().count == forked + 1, "the case ran in a fresh interpreter (see conftest.run_script)"
    else:
        environment = {**os.environ, **env, "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
        result = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=environment, capture_output=True,
                                text=True, timeout=300)  # fmt: skip
        code, err = result.returncode, result.stderr
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("epoch ")]
    assert code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    for words in expected if isinstance(expected, tuple) else (expected,):
        assert words in lines[0], lines[0]
    assert snapshot(files.earlier) == before, "an earlier run's files changed"
    if case not in STARTS_A_RUN:
        assert not out.exists(), "a refused run left a folder"


# The Bad input rows of docs/errors.md (by how each begins) and the cases above that try them.
TABLE_ROWS = {
    "missing or malformed data folder": ["data-folder-missing", "data-folder-malformed", "data-split-missing",
                                         "empty-class-folder", "overwrite-then-bad-data"],
    "unknown `--data` value": ["data-unknown-value"],
    "a class that is not an ImageNet-1k class": ["class-not-imagenet"],
    "`--label-weight` outside [0, 1]": ["label-weight-out-of-range", "temperature-zero", "fraction-out-of-range",
                                        "label-noise-out-of-range",
                                        "seed-negative", "augment-seed-negative", "batch-size-one", "agent-lr-negative",
                                        "agent-epochs-zero", "gamma-above-one"],
    "a flag argparse cannot read": ["seed-not-an-int", "epochs-not-an-int", "unknown-flag", "evaluate-bad-flag-value",
                                    "abbreviated-flag"],
    "a flag that does not apply to the script": ["flag-not-for-the-rl-script", "flag-not-for-pretrain-teacher"],
    "a `--fraction`": ["fraction-selects-one", "fraction-selects-none"],
    "a teacher checkpoint that lacks some of the data's classes": [
        "teacher-other-class-count",
        "teacher-name-does-not-fit-weights",
    ],
    "a corrupt image": ["corrupt-image-in-worker"],
    "loader workers whose batches do not fit in `/dev/shm`": [],  # test_gpu_path.py fakes a small /dev/shm instead
    "no network for hub weights": ["no-network-for-weights", "no-network-for-data"],
    "an existing run folder": ["existing-run-folder"],
    "`--out`, `--cache-dir`, `--json` or `--report`": ["out-under-a-file", "out-is-a-file", "cache-dir-under-a-file",
                                                       "overwrite-then-bad-cache-dir", "evaluate-json-unwritable",
                                                       "evaluate-report-unwritable"],
    "a full disk": [],  # no disk fills up in a test: test_bookkeeping.py fills one atomic write instead
    "unknown `--student`": ["overwrite-then-unknown-student"],
    "`--resume` on a run that never finished an epoch": ["resume-nothing-to-resume"],
    "`--resume` with incompatible flags": ["resume-other-flags", "resume-changed-data"],
    "`--resume` or `evaluate.py` on a folder": ["resume-corrupt-config", "resume-no-config", "evaluate-corrupt-config"],
    "`evaluate.py --report` with a cut-short": ["evaluate-report-truncated-metrics"],
    "`evaluate.py` given no folder": ["evaluate-no-run-folder"],
    "a NaN or infinite loss": ["nan-loss"],
    "`--policy` of another action space": ["policy-other-action-space", "policy-not-a-zip"],
}  # fmt: skip


def test_every_readme_row_has_its_cases():
    """The table of docs/errors.md is the promise: each row is tried above, and each case belongs to a row."""
    table = (ROOT / "docs" / "errors.md").read_text().split("## Bad input", 1)[1].split("\n## ", 1)[0]
    rows = [line[2:] for line in table.splitlines() if line.startswith("| ") and not line.startswith("| Input")]
    assert [next(key for key in TABLE_ROWS if row.startswith(key)) for row in rows] == list(TABLE_ROWS)
    case_ids = [case[0] for case in CASES]
    assert sorted(sum(TABLE_ROWS.values(), [])) == sorted(case_ids)
