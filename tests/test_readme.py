"""The README's commands are true: set-up matches CI, the demo runs as written, every documented flag parses."""

import re
import shlex
import subprocess
import sys

import pytest

import cli
from conftest import ROOT

README = (ROOT / "README.md").read_text()


def code_blocks() -> list[list[str]]:
    return [block.strip().splitlines() for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S)]


def test_setup_and_test_commands_are_what_ci_runs():
    venv, *install_and_test = code_blocks()[0]
    assert venv == "python3 -m venv .venv && . .venv/bin/activate"  # what CI does, in a folder of its own
    assert install_and_test == ["pip install -r requirements.txt", "python -m pytest"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install --quiet -r requirements.txt" in ci and "\npython -m pytest" in ci


@pytest.mark.slow
def test_demo_runs_as_written(tmp_path):
    """The README's demo command, with --quick (tiny data, one epoch) and a temporary --out appended."""
    (demo,) = code_blocks()[1]
    assert demo == "scripts/reproduce_table.sh --data synthetic"
    out = tmp_path / "table"

    def demo_run():
        return subprocess.run(
            ["bash", "-c", f"{demo} --quick --out {out}"],
            cwd=ROOT,
            env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=600,
        )

    result = demo_run()
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    headers = [line for line in lines if line.startswith("== [")]  # one per training: which row, which command
    rows = ["teacher", "labels", "kd", "kd-teacher-only", "rl", "random-subset", "kd-teacher-only-equal-compute"]
    assert [line.split(":")[0] for line in headers] == [f"== [{k}/7] {row}" for k, row in enumerate(rows, start=1)]
    assert headers[3].startswith("== [4/7] kd-teacher-only: python train_student.py --data synthetic:")
    assert f"--out {out}/kd-teacher-only " in headers[3] and "--label-weight 0" in headers[3]
    assert not any(line.startswith("{") for line in lines), "a raw JSON line of a run"
    assert sum(line.startswith("test top-1 ") for line in lines) == 6  # one result line per row
    assert lines[-1].startswith("| Student (resnet10t, KD, teacher only)")  # it ends with the table
    table = [line for line in lines if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table[1:]] == [
        "| Teacher (resnet10t, pretrained on 8 classes, sliced to these 4)",
        "| Student (resnet10t, labels only)",
        "| Student (resnet10t, KD, 60% labels, 40% teacher)",
        "| Student (resnet10t, KD, teacher only)",
        "| Student (resnet10t, KD + curriculum chosen by the RL agent, teacher only)",
        "| Student (resnet10t, KD + random_subset curriculum, teacher only)",
        "| Student (resnet10t, KD, teacher only)",  # the equal-compute control, round(0.6 E) epochs
    ]
    assert "`kd-teacher-only-equal-compute`" in table[-1]
    assert "| Student (resnet10t, labels only)" in (out / "table.md").read_text()
    report = (out / "report" / "report.md").read_text()  # the demo ends by writing the report for its rows
    assert "| Student (resnet10t, labels only)" in report and (out / "report" / "accuracy.png").is_file()

    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    again = demo_run()  # the same command again: refused before anything runs, nothing replaced
    assert again.returncode == 2 and "--overwrite" in again.stderr and "--out" in again.stderr, again.stderr
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before


def test_every_python_command_in_the_readme_parses():
    """Commands that need a GPU and the real data cannot run here; their flags must still exist and parse."""
    import compare_curricula
    import evaluate
    import pretrain_teacher
    import train_student
    import train_student_rl

    scripts = {"train_student.py": train_student.Config, "evaluate.py": evaluate.Config,
               "train_student_rl.py": train_student_rl.RLConfig, "pretrain_teacher.py": pretrain_teacher.TeacherConfig,
               "compare_curricula.py": compare_curricula.Config}  # fmt: skip
    pattern = r"`python ((?:train_student|train_student_rl|evaluate|pretrain_teacher|compare_curricula)\.py[^`]*)`"
    commands = re.findall(pattern, README)
    assert len(commands) >= 5
    for command in commands:
        script, *argv = shlex.split(command)
        try:
            cli.parse_config(scripts[script], argv)
        except SystemExit as exit_info:  # --help prints and exits 0; a bad flag exits 2
            assert exit_info.code == 0, command
