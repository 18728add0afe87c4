"""The run's records: a leaf module with no import circles anywhere, one-line errors for what a user or a disk can
get wrong, and temporary files that never outlive a run."""

import errno
import os
import subprocess
import sys
from dataclasses import dataclass

import house
import numpy as np
import pytest

import evaluate
from common import cli, files, metrics, run_folder
from common.errors import UserError
from conftest import ROOT


def test_common_imports_no_ml_module():
    """The run's records (run folder, metrics log, files, command line) can be read, tested and reused (the report)
    without the training stack: common/ imports only common/."""
    for module in house.MODULES:
        if module.startswith("common."):
            assert {name.split(".")[0] for name in house.imports(module)} <= {"common"}, module
    assert house.imports("common.run_folder") == {"common.cli", "common.errors", "common.files", "common.signals"}
    assert house.imports("common.files") == {"common.errors"}
    assert house.imports("common.cli") == {"common.errors"}
    assert house.imports("common.seeds") == house.imports("common.signals") == set()
    assert house.imports("training.devices") == {"common.errors", "common.signals"}


def test_no_import_circles_between_modules_nor_between_rooms():
    """Not even inside a function: file by file, and room by room (a folder at the root is one room)."""
    for graph in (house.module_graph(), house.room_graph()):
        assert house.circles(graph) == []


def test_no_module_imports_a_script():
    importers = {module: house.imports(module) & house.SCRIPTS for module in house.MODULES}
    assert {module: scripts for module, scripts in importers.items() if scripts} == {}


def test_the_root_holds_the_scripts_and_the_design_cards_modules():
    assert house.ROOT_FILES == house.SCRIPTS | {"models", "curriculum_dataloader", "rl_curriculum_env"}
    assert len(house.ROOT_FILES) <= 18


def test_report_reads_runs_without_the_training_stack():
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys; from analysis import report; print(sorted(sys.modules))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for heavy in ("'torch'", "'timm'", "'training.experiment'", "'models'"):
        assert heavy not in loaded


@dataclass
class Flags:
    no_teacher: bool = cli.field(False, "leave the teacher row out")
    amp: bool = cli.field(False, "mixed precision")
    epochs: int = cli.field(3, "epochs")


def test_a_no_flag_means_true_and_others_keep_their_negation():
    assert cli.parse_config(Flags, ["--no-teacher"]).no_teacher is True
    assert cli.parse_config(Flags, []).no_teacher is False
    assert cli.parse_config(Flags, ["--amp"]).amp is True
    assert cli.parse_config(Flags, ["--amp", "--no-amp"]).amp is False
    assert cli.parse_config(evaluate.Config, ["run", "--no-teacher"]).no_teacher is True


def test_argparse_errors_are_one_line_naming_help():
    with pytest.raises(UserError, match=r"argument --epochs: invalid int value: 'x'; see --help"):
        cli.parse_config(Flags, ["--epochs", "x"])


def test_full_disk_is_a_user_error_and_leaves_no_temporary(tmp_path):
    def write(handle):
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match="no space left"):
        files.atomic_write(tmp_path / "last.pt", write)
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    for name in (".last.pt.abc123.tmp", ".metrics.csv.x.tmp", "last.pt", "notes.tmp"):
        (tmp_path / name).write_bytes(b"")
    files.remove_stale_temporaries(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["last.pt", "notes.tmp"]


def test_a_cut_short_metrics_file_is_a_user_error(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,train_loss,val_acc\n1,0.5,40.0\n2,0.4\n")
    with pytest.raises(UserError, match="cut short or malformed at line 3"):
        metrics.read_metrics(path)
    path.write_text("epoch,train_loss,val_acc\n1,0.5,40.0\n")
    assert metrics.read_metrics(path) == [{"epoch": "1", "train_loss": "0.5", "val_acc": "40.0"}]


def test_unwritable_places_are_refused(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        files.check_writable_folder(afile, "--out")
    with pytest.raises(UserError, match="under the file"):
        files.check_writable_folder(afile / "a" / "b", "--out")
    with pytest.raises(UserError, match="is a folder"):
        files.check_writable_file(tmp_path, "--json")
    assert files.check_writable_folder(tmp_path / "new" / "run", "--out") == tmp_path / "new" / "run"
    assert not (tmp_path / "new").exists()  # checking creates nothing


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    """mkstemp makes 0600 files; a run's files are readable as the umask says, like any file open() creates."""
    code = "import sys; from common import files; files.save_json(sys.argv[1], {'a': 1})"
    path = tmp_path / "results.json"
    subprocess.run([sys.executable, "-c", code, path], cwd=ROOT, check=True, preexec_fn=lambda: os.umask(umask))
    assert path.stat().st_mode & 0o777 == mode
    assert list(tmp_path.iterdir()) == [path]  # no temporary left


def test_a_folder_whose_run_never_finished_an_epoch_is_not_a_run(tmp_path, capsys):
    """A run that died before its first last.pt left config.json and a metrics row: the corrected command may use the
    folder without --overwrite (its stale files are cleared), and --resume has nothing to resume."""
    from training.config import TrainConfig

    dead = tmp_path / "dead"
    dead.mkdir()
    (dead / "config.json").write_text('{"script": "train_student.py", "epochs": 1}')
    (dead / "metrics.csv").write_text("epoch,val_acc\n1,50.0\n")
    (dead / "notes.txt").write_text("mine")
    assert not run_folder.holds_run(dead)
    with pytest.raises(UserError, match="nothing to resume; run its command again without --resume"):
        run_folder.resume_config(TrainConfig, ["--resume", str(dead)], "train_student.py")
    assert run_folder.prepare_run_folder(dead, overwrite=False, dry_run=True) == dead
    assert (dead / "config.json").exists()  # a dry run clears nothing
    run_folder.prepare_run_folder(dead, overwrite=False)
    run_folder.release_folder_locks()  # this test stands in for the run: the lock ends with it
    assert [path.name for path in dead.iterdir()] == ["notes.txt"]  # only the run's own files are cleared
    assert "never finished an epoch (config.json, metrics.csv)" in capsys.readouterr().err
    for marker in ("last.pt", "proxy/last.pt", "results.json"):  # a completed epoch (an RL proxy's too) is a run
        run = tmp_path / marker.replace("/", "-")
        (run / marker).parent.mkdir(parents=True)
        (run / marker).write_bytes(b"")
        with pytest.raises(UserError, match="already holds a run.*--overwrite"):
            run_folder.prepare_run_folder(run, overwrite=False, dry_run=True)


def test_arrays_appended_to_an_npz_are_read_with_the_ones_before(tmp_path):
    """difficulty_history.npz grows by an entry an epoch without being rewritten (files.append_to_zip)."""
    path = tmp_path / "history.npz"
    np.savez(path, epoch_0=np.arange(3, dtype=np.float16))
    before = path.read_bytes()
    files.append_to_zip(path, {"epoch_1.npy": lambda f: np.lib.format.write_array(f, np.ones(3, np.float16))})
    assert path.read_bytes().startswith(before[:100])  # the first entry's bytes stay where they were
    history = np.load(path)
    assert history.files == ["epoch_0", "epoch_1"]
    np.testing.assert_array_equal(history["epoch_1"], np.ones(3))
