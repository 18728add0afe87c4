"""README.md and docs/ are true: set-up matches CI, the demo runs as written, every documented command parses, every
relative link leads to a file and heading that exist, and the README stays a front door."""

import re
import shlex
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from common import cli
from common.errors import UserError
from conftest import ROOT

README = (ROOT / "README.md").read_text()
DOCS = {path: path.read_text() for path in sorted((ROOT / "docs").glob("*.md"))}
PAGES = {ROOT / "README.md": README, **DOCS}
# Pages the README links to that other branches add; once a page exists its links and commands are checked like the
# rest. Remove a name here when its page lands.
EXPECTED_PAGES: set[str] = set()
README_WORD_LIMIT = 1700  # a front door (nanoGPT 2,090 words, CleanRL 1,110): details go to docs/


def code_blocks(text: str = README, language: str = "bash") -> list[list[str]]:
    return [block.strip().splitlines() for block in re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)]


def test_setup_and_test_commands_are_what_ci_runs():
    venv, *commands = code_blocks()[0]
    assert venv == "python3 -m venv .venv && . .venv/bin/activate"  # what CI does, in a folder of its own
    ci = (ROOT / ".ci" / "run").read_text().split('source "$venv/bin/activate"\n', 1)[1].splitlines()
    ci_commands = [line.replace(" --quiet", "") for line in ci if line and "--upgrade pip" not in line]
    assert commands == ci_commands == ["pip install -r requirements.txt", "ruff check .", "python -m pytest"]


def test_readme_names_both_test_tiers_and_the_formatter():
    for command in ('`python -m pytest -m "not slow"`', "`ruff check .`", "`ruff format`", "--quick"):
        assert command in README, command


@pytest.mark.slow
def test_demo_runs_as_written(tmp_path):
    """The README's demo command, with --quick (tiny data, 2 epochs) and a temporary --out appended."""
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
    again = demo_run()  # the same command again: the finished table printed, nothing trained or rewritten
    assert again.returncode == 0, again.stderr
    assert again.stdout == (out / "table.md").read_text() and "finished before" in again.stderr
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before


# ----------------------------------------------------------------------------------------------------------------------
# Every command of README.md and docs/


def documented_commands() -> list[tuple[str, list[str]]]:
    """(page, argv) of each command in inline code or a code block that starts with `python X.py`, `torchrun ...
    X.py` or `scripts/X.sh`; comments and `...` placeholders are dropped."""
    found = []
    for path, text in PAGES.items():
        inline = re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
        blocks = [re.sub(r"\\\n\s*", " ", block) for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)]
        block_lines = [line for block in blocks for line in block.splitlines()]  # a trailing \ continues the line
        for snippet in inline + block_lines:
            snippet = " ".join(snippet.split("  #")[0].split()).removeprefix("time ")  # one line, as a shell reads it
            if re.match(r"(python [\w/]+\.py|torchrun .*\.py|scripts/\w+\.sh)( |$)", snippet):
                argv = [arg for arg in shlex.split(snippet) if arg != "..."]
                found.append((path.relative_to(ROOT).as_posix(), argv))
    return found


def config_classes() -> dict:
    import bench
    import compare_curricula
    import evaluate
    import export
    import prepare_data
    import pretrain_teacher
    import train_student_rl
    from training.config import TrainConfig

    return {"train_student.py": TrainConfig, "evaluate.py": evaluate.Config,
            "train_student_rl.py": train_student_rl.RLConfig, "pretrain_teacher.py": pretrain_teacher.TeacherConfig,
            "compare_curricula.py": compare_curricula.Config, "bench.py": bench.BenchConfig,
            "prepare_data.py": prepare_data.PrepareConfig, "export.py": export.Config}  # fmt: skip


def parse(config_class, argv: list[str], where: str) -> None:
    try:
        cli.parse_config(config_class, argv)
    except SystemExit as exit_info:  # --help prints and exits 0
        assert exit_info.code == 0, where
    except UserError as err:  # a flag that does not exist, or a value that does not parse
        raise AssertionError(f"{where}: {err}") from None


SWEEPS = {"scripts/reproduce_table.sh": "table", "scripts/compare_curricula.sh": "compare"}


def check_command(argv: list[str], where: str, configs: dict) -> None:
    if argv[0] == "python":
        argv = argv[1:]
    elif argv[0] == "torchrun":  # torchrun's own flags, then the script and its flags
        argv = argv[next(k for k, arg in enumerate(argv) if arg.endswith(".py")) :]
    script, *args = argv
    assert (ROOT / script).is_file(), f"{where}: no {script}"
    if script.endswith(".sh") or script == "sweep.py":  # the wrappers of sweep.py: its table or compare sweep
        import sweep

        sweep_argv = args if script == "sweep.py" else [SWEEPS[script], *args]
        try:  # the sweep's own options (as on a Slurm login node, where srun exists); those after -- go to every run
            with mock.patch.object(sweep.shutil, "which", return_value="/usr/bin/srun"):
                sweep.parse_args(sweep_argv)
        except SystemExit as exit_info:  # --help prints and exits 0
            assert exit_info.code == 0, where
        except UserError as err:
            raise AssertionError(f"{where}: {err}") from None
        extra = args[args.index("--") + 1 :] if "--" in args else []
        parse(configs["train_student.py"], extra, where)
    elif script in configs:  # the flags exist and their values parse
        parse(configs[script], args, where)
    else:  # a helper with a plain argparse: at least each flag is one it defines
        for option in (arg.split("=")[0] for arg in args if arg.startswith("--")):
            assert f'"{option}"' in (ROOT / script).read_text(), (
                f"{where}: {script} has no flag {option} (a script whose flags come from a config dataclass belongs "
                "in config_classes)"
            )


def test_every_command_in_the_readme_and_docs_parses():
    """Commands that need a GPU and the real data cannot run here; their scripts, options and flags must exist and
    their values parse against the script's config."""
    commands = documented_commands()
    assert sum(page == "README.md" for page, _ in commands) >= 5
    assert {page for page, _ in commands} >= {"README.md", "docs/results.md", "docs/curriculum.md"}
    configs = config_classes()
    for page, argv in commands:
        if page != "docs/extending.md":  # its commands need its new classes: tests/test_extending.py runs them
            check_command(argv, f"{page}: {shlex.join(argv)}", configs)


def test_a_wrong_flag_in_a_documented_command_is_caught():
    configs = config_classes()
    with pytest.raises(AssertionError):
        check_command(["python", "train_student.py", "--epoch", "3"], "abbreviated flag", configs)
    with pytest.raises(AssertionError):
        check_command(["scripts/reproduce_table.sh", "--seed", "0"], "unknown script option", configs)
    with pytest.raises(AssertionError):
        check_command(["python", "scripts/target_overlap.py", "x.npy", "--fractions", "0.5"], "helper", configs)


# ----------------------------------------------------------------------------------------------------------------------
# Links and size


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but hyphens dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return {slug(heading) for heading in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def relative_links(text: str) -> list[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return [target for target in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", target)]


def test_every_relative_link_leads_to_a_file_and_heading():
    checked = 0
    for page, text in PAGES.items():
        for target in relative_links(text):
            name, _, anchor = target.partition("#")
            path = (page.parent / name).resolve() if name else page
            where = f"{page.relative_to(ROOT)} links to {target}"
            if path.relative_to(ROOT).as_posix() in EXPECTED_PAGES and not path.exists():
                continue  # another branch adds it; from then on it is checked like the others
            assert path.is_file(), f"{where}: no such file"
            if anchor:
                assert anchor in anchors(path.read_text()), f"{where}: no such heading"
            checked += 1
    assert checked >= 30


def test_the_readme_links_every_docs_page():
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in relative_links(README)}
    pages = {path.resolve() for path in DOCS} | {(ROOT / name).resolve() for name in EXPECTED_PAGES}
    assert pages <= linked, sorted(str(path.relative_to(ROOT)) for path in pages - linked)


def test_slug_follows_github():
    assert slug("Reproducing the reference table on a GPU") == "reproducing-the-reference-table-on-a-gpu"
    assert slug("What is reproducible, and what is not") == "what-is-reproducible-and-what-is-not"
    assert slug("`models.sample_difficulty`") == "modelssample_difficulty"
    assert slug("Data sources (`--data`)") == "data-sources---data"


def test_the_readme_stays_a_front_door():
    words = len(README.split())  # as `wc -w README.md` counts
    assert words <= README_WORD_LIMIT, f"README.md has {words} words; move details to a docs/ page"


def test_no_page_cites_files_users_do_not_have():
    """The code and the docs cite docs/ pages, never the design notes this repo was built from."""
    sources = [
        *ROOT.glob("*.py"),
        *ROOT.glob("*/*.py"),
        *(path for path in ROOT.glob("scripts/*") if path.is_file()),
        *PAGES,
    ]
    for path in sources:
        text = Path(path).read_text()
        for name in ("shared/", "DESIGN.md"):
            assert name not in text or path.name == "test_readme.py", f"{path.relative_to(ROOT)} cites {name}"


# ----------------------------------------------------------------------------------------------------------------------
# The layout, the generated tables and the code the docs cite


def test_the_readme_layout_names_every_module_by_its_folder():
    import house

    layout = README.split("## Layout", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([\w/]+\.py)`", layout))
    modules = {path.relative_to(ROOT).as_posix() for path in house.PATHS.values() if path.name != "__init__.py"}
    assert modules <= named, sorted(modules - named)
    scripts = {name for path in (ROOT / "scripts").glob("*.py") for name in (path.name, f"scripts/{path.name}")}
    assert named <= modules | scripts, named - modules - scripts


def test_the_generated_tables_of_the_docs_are_current():
    """scripts/update_docs.py renders them from the code (and the stored results): run it after a change."""
    from analysis import docs_tables

    assert docs_tables.pages(), "no generated region left in the docs"
    assert docs_tables.stale() == []


FILE_SUFFIXES = ("json", "csv", "pt", "npy", "npz", "zip", "md", "png", "onnx", "safetensors", "sh", "toml", "log")


def test_every_module_and_name_the_docs_cite_exists():
    """A `path.py` in backticks is a file of the repo (or a script of scripts/), a `module.name` a definition of that
    module: the docs follow the code when it moves."""
    import ast

    import house

    checked = 0
    for page, text in PAGES.items():
        for code in re.findall(r"`([^`\s]+)`", re.sub(r"```.*?```", "", text, flags=re.S)):
            where = f"{page.relative_to(ROOT)} cites {code}"
            if re.fullmatch(r"[\w/]+\.py", code) and not code.startswith("tests/"):
                assert (ROOT / code).is_file() or (ROOT / "scripts" / code).is_file(), where
                checked += 1
            elif re.fullmatch(r"[a-z_]+(\.\w+)+", code) and code.split(".")[-1] not in FILE_SUFFIXES:
                parts = code.split(".")
                module = next((".".join(parts[:k]) for k in range(len(parts), 0, -1)
                               if ".".join(parts[:k]) in house.MODULES), None)  # fmt: skip
                if module is None:
                    continue  # another library's (torch.compile, timm.create_model)
                names = parts[len(module.split(".")) :]
                tree = ast.parse(house.PATHS[module].read_text())
                defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
                defined |= {target.id for node in tree.body if isinstance(node, ast.Assign) for target in node.targets
                            if isinstance(target, ast.Name)}  # fmt: skip
                assert not names or names[0] in defined, where
                checked += 1
    assert checked >= 20
