"""The run's records: a leaf module with no import circles anywhere, one-line errors for what a user or a disk can
get wrong, and temporary files that never outlive a run."""

import ast
import errno
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

import bookkeeping
import cli
import evaluate
import files
from conftest import ROOT
from errors import UserError

PROJECT = {path.stem for path in ROOT.glob("*.py")}


def project_imports(module: str) -> set[str]:
    """Project modules `module` imports anywhere in its file, function bodies included."""
    tree = ast.parse((ROOT / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return (names & PROJECT) - {module}  # a script importing itself by name (for pickling) is no circle


def test_bookkeeping_and_cli_import_no_ml_module():
    assert project_imports("bookkeeping") == {"cli", "errors", "files", "signals"}
    assert project_imports("files") == {"errors"}
    assert project_imports("cli") == {"errors"}


def test_leaf_modules_import_nothing_of_the_project_but_errors():
    assert project_imports("seeds") == set()
    assert project_imports("signals") == set()
    assert project_imports("devices") == {"errors", "signals"}


def test_no_import_circles_not_even_inside_functions():
    graph = {module: project_imports(module) for module in PROJECT}

    def reaches(start, goal, seen=()):
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, (*seen, nxt))) for nxt in graph[start])

    circles = [module for module in PROJECT if reaches(module, module)]
    assert circles == []


def test_report_reads_runs_without_the_training_stack():
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, report; print(sorted(sys.modules))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for heavy in ("'torch'", "'timm'", "'engine'", "'models'"):
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
        bookkeeping.read_metrics(path)
    path.write_text("epoch,train_loss,val_acc\n1,0.5,40.0\n")
    assert bookkeeping.read_metrics(path) == [{"epoch": "1", "train_loss": "0.5", "val_acc": "40.0"}]


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
    code = "import sys, files; files.save_json(sys.argv[1], {'a': 1})"
    path = tmp_path / "results.json"
    subprocess.run([sys.executable, "-c", code, path], cwd=ROOT, check=True, preexec_fn=lambda: os.umask(umask))
    assert path.stat().st_mode & 0o777 == mode
    assert list(tmp_path.iterdir()) == [path]  # no temporary left


def test_a_folder_whose_run_never_finished_an_epoch_is_not_a_run(tmp_path, capsys):
    """A run that died before its first last.pt left config.json and a metrics row: the corrected command may use the
    folder without --overwrite (its stale files are cleared), and --resume has nothing to resume."""
    import train_student

    dead = tmp_path / "dead"
    dead.mkdir()
    (dead / "config.json").write_text('{"script": "train_student.py", "epochs": 1}')
    (dead / "metrics.csv").write_text("epoch,val_acc\n1,50.0\n")
    (dead / "notes.txt").write_text("mine")
    assert not bookkeeping.holds_run(dead)
    with pytest.raises(UserError, match="nothing to resume; run its command again without --resume"):
        bookkeeping.resume_config(train_student.Config, ["--resume", str(dead)], "train_student.py")
    assert bookkeeping.prepare_run_folder(dead, overwrite=False, dry_run=True) == dead
    assert (dead / "config.json").exists()  # a dry run clears nothing
    bookkeeping.prepare_run_folder(dead, overwrite=False)
    bookkeeping.release_folder_locks()  # this test stands in for the run: the lock ends with it
    assert [path.name for path in dead.iterdir()] == ["notes.txt"]  # only the run's own files are cleared
    assert "never finished an epoch (config.json, metrics.csv)" in capsys.readouterr().err
    for marker in ("last.pt", "proxy/last.pt", "results.json"):  # a completed epoch (an RL proxy's too) is a run
        run = tmp_path / marker.replace("/", "-")
        (run / marker).parent.mkdir(parents=True)
        (run / marker).write_bytes(b"")
        with pytest.raises(UserError, match="already holds a run.*--overwrite"):
            bookkeeping.prepare_run_folder(run, overwrite=False, dry_run=True)
