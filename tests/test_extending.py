"""docs/extending.md, run word for word: each class and its test are added where the block's first line says, then
the page's commands run in order in a copy of the repo; the new strategy and agent train, are compared with
random_subset, pass their tests, and the strategy joins the docs' table. Nothing else is edited."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

PAGE = (ROOT / "docs" / "extending.md").read_text()
LEFT_OUT = shutil.ignore_patterns(".git", ".venv", "venv", "runs", "__pycache__", ".pytest_cache", ".ruff_cache",
                                  ".hypothesis", "*.pt", "*.npy", "*.parquet")  # fmt: skip


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE, flags=re.S)


def test_each_class_names_the_file_it_joins():
    targets = [block.splitlines()[0] for block in blocks("python")]
    assert targets == ["# curriculum_dataloader.py", "# tests/test_curriculum.py", "# agents/bandit.py",
                       "# tests/test_bandit.py"]  # fmt: skip
    for target in targets:
        assert (ROOT / target.removeprefix("# ")).is_file()


@pytest.mark.slow
def test_the_worked_example_runs_as_written(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(ROOT, repo, ignore=LEFT_OUT)
    for block in blocks("python"):
        target, code = block.split("\n", 1)
        path = repo / target.removeprefix("# ")
        path.write_text(path.read_text().rstrip("\n") + "\n\n\n" + code)
    script = "set -euo pipefail\n" + "\n".join(blocks("bash"))
    environment = {**os.environ, "HOME": str(tmp_path), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", script], cwd=repo, env=environment, capture_output=True, text=True,
                            timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "1 passed" in result.stdout  # each class's own test ran
    strategy = (repo / "runs" / "compare-stratified" / "comparison.md").read_text()
    agent = (repo / "runs" / "epsilon" / "comparison.md").read_text()
    for table, row in ((strategy, "stratified"), (agent, "epsilon")):
        assert re.search(rf"\| {row} \| 2 \| .* \| [+-]\d+\.\d\d \[", table), table  # paired with random_subset
    assert "| `stratified` |" in (repo / "docs" / "curriculum.md").read_text()  # the registry's row in the docs
    assert "stratified" in subprocess.run([sys.executable, "train_student.py", "--help"], cwd=repo,
                                          capture_output=True, text=True).stdout  # fmt: skip
