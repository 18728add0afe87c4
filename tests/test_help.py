"""Every script's --help: grouped as its config is, its docstring's examples as written, defaults only where they
say something, no abbreviations, and only the flags that apply to that script (the others refused in one line)."""

import re

import pytest

import bench
import compare_curricula
import evaluate
import export
import pretrain_teacher
import train_student
import train_student_rl
from common import cli
from common.errors import UserError
from training.config import TrainConfig

SCRIPTS = {
    "train_student.py": train_student,
    "train_student_rl.py": train_student_rl,
    "evaluate.py": evaluate,
    "pretrain_teacher.py": pretrain_teacher,
    "compare_curricula.py": compare_curricula,
    "bench.py": bench,
    "export.py": export,
}
TRAINING_GROUPS = ["data:", "models:", "loss and optimisation:", "curriculum:", "run:"]
RL_NOT_FLAGS = ["--target", "--pacing", "--start-fraction", "--pace-epochs"]


def script_help(module, capsys) -> str:
    """What `python SCRIPT --help` prints: the script's own main, given --help."""
    with pytest.raises(SystemExit) as stop:
        module.main(["--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


def flags_listed(help_text: str) -> set[str]:
    return set(re.findall(r"^  (--[a-z0-9-]+)", help_text, flags=re.M))


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_has_no_default_noise_and_keeps_the_examples(script, capsys):
    help_text = script_help(SCRIPTS[script], capsys)
    assert "(default: None)" not in help_text and "(default: )" not in help_text
    assert "(default: False)" not in help_text and "--no-no-" not in help_text
    examples = [line for line in SCRIPTS[script].__doc__.splitlines() if line.startswith("    ")]
    assert examples, "every script's docstring shows how to call it"
    for line in examples:  # each example on its own line, spaces and comments as written
        assert line in help_text.splitlines(), line


@pytest.mark.parametrize("script", ["train_student.py", "train_student_rl.py", "pretrain_teacher.py"])
def test_training_flags_are_grouped_as_the_config_is(script, capsys):
    lines = script_help(SCRIPTS[script], capsys).splitlines()
    headings = [line for line in lines[lines.index("options:") :] if re.fullmatch(r"[a-z].*:", line)]
    assert headings[: len(TRAINING_GROUPS) + 1] == ["options:", *TRAINING_GROUPS]
    section = lines[lines.index("loss and optimisation:") : lines.index("curriculum:")]
    assert {"--label-weight", "--temperature", "--epochs", "--lr"} <= flags_listed("\n".join(section))


def test_rl_help_lists_only_flags_that_apply_and_refuses_the_others(capsys):
    help_text = script_help(train_student_rl, capsys)
    listed = flags_listed(help_text)
    assert not listed & set(RL_NOT_FLAGS)
    assert {"--target-scale", "--fraction", "--curriculum", "--agent-lr", "--pretrain-episodes"} <= listed
    assert "agent (PPO):" in help_text.splitlines()
    for flag in RL_NOT_FLAGS:
        with pytest.raises(UserError, match=f"^{flag} does not apply to [^:]+: (the agent|only easy_to_hard)"):
            cli.parse_config(train_student_rl.RLConfig, [flag, "0.5"])
    config = cli.parse_config(train_student_rl.RLConfig, [])
    assert (config.target, config.pacing) == (0.5, "root")  # not flags, still the config's values
    train_flags = flags_listed(script_help(train_student, capsys))
    assert set(RL_NOT_FLAGS) <= train_flags  # train_student.py keeps them


def test_pretrain_teacher_refuses_the_run_folder_flags():
    for flag in ("--out", "--overwrite", "--resume"):
        with pytest.raises(UserError, match=f"^{flag} does not apply"):
            cli.parse_config(pretrain_teacher.TeacherConfig, [flag, "x"])


@pytest.mark.parametrize(
    ("config_class", "argv", "abbreviation"),
    [(TrainConfig, ["--epoch", "1"], "--epoch"), (train_student_rl.RLConfig, ["--agent-lr=1", "--gam", "1"],
     "--gam"), (evaluate.Config, ["run", "--batch", "3"], "--batch")],
)  # fmt: skip
def test_abbreviations_are_refused(config_class, argv, abbreviation):
    with pytest.raises(UserError, match=f"unrecognized arguments: {abbreviation} "):
        cli.parse_config(config_class, argv)


def test_switches_list_their_on_form_and_still_take_the_off_form(capsys):
    help_text = script_help(train_student, capsys)
    assert "--amp " in help_text and "--no-amp" not in help_text  # off by default: the switch alone
    assert cli.parse_config(TrainConfig, ["--amp", "--no-amp"]).amp is False
    rl_help = script_help(train_student_rl, capsys)
    assert "--normalize-reward, --no-normalize-reward" in rl_help and "(default: on)" in rl_help
