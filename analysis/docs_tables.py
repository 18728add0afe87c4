"""The parts of the docs that are generated, not written: each region of a page between `<!-- generated: NAME -->`
and `<!-- end: NAME -->` holds what `RENDERERS[NAME]()` returns. `scripts/update_docs.py` rewrites them; a test fails
when one is stale, so a table in the docs never disagrees with the code or the data it comes from."""

from __future__ import annotations

import re
from pathlib import Path

from curriculum_dataloader import strategy_table

ROOT = Path(__file__).resolve().parents[1]
RENDERERS = {"strategies": strategy_table}
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
    """Render every generated region; returns the pages that changed."""
    changed = stale(root)
    for name in changed:
        path = root / name
        path.write_text(render(path.read_text()))
    return changed
