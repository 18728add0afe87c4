"""The parts of the docs that are generated, not written: each region of a page between `<!-- generated: NAME -->`
and `<!-- end: NAME -->` holds what `RENDERERS[NAME]()` returns (the strategy table from the registry, the lab's
tables from its stored runs, docs/results/lab-runs.csv). `scripts/update_docs.py` rewrites them and redraws the
lab's figure; a test fails when one is stale, so a table in the docs never disagrees with the code or the data it
comes from."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

from analysis import lab
from curriculum_dataloader import strategy_table

ROOT = Path(__file__).resolve().parents[1]
LAB_TABLES = ("lab-pilot", "lab-clean", "lab-symmetric", "lab-confusable", "lab-family", "lab-family-last",
              "lab-controls", "lab-shares")  # fmt: skip
RENDERERS = {"strategies": strategy_table, **{name: partial(lab.stored_table, name) for name in LAB_TABLES}}
REGION = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end: (?P=name) -->)", re.S)


def render(text: str) -> str:
    """The page with every generated region rendered afresh."""
    return REGION.sub(lambda m: m.group(1) + RENDERERS[m.group("name")]().rstrip("\n") + "\n" + m.group(4), text)


def pages(root: Path = ROOT) -> list[Path]:
    """The pages that hold a generated region."""
    candidates = [*sorted((root / "docs").glob("*.md")), root / "README.md"]
    return [path for path in candidates if REGION.search(path.read_text())]


def stale(root: Path = ROOT) -> list[str]:
    """The pages whose generated regions differ from what the code renders now."""
    return [str(path.relative_to(root)) for path in pages(root) if render(path.read_text()) != path.read_text()]


def update(root: Path = ROOT) -> list[str]:
    """Render every generated region and draw the figures of stored results; returns the pages that changed."""
    lab.plot_family(lab.stored_summary()["family"], lab.FIGURE)
    changed = stale(root)
    for name in changed:
        path = root / name
        path.write_text(render(path.read_text()))
    return changed
