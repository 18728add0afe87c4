"""Rewrite the generated parts of the docs (tables between `<!-- generated: NAME -->` and `<!-- end: NAME -->`) from
the code and the stored results they come from; `--check` only lists the stale pages and exits 1 if there are any.

    python scripts/update_docs.py            # after adding a strategy, or new results
    python scripts/update_docs.py --check    # what tests/test_readme.py asserts
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis import docs_tables  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="list the stale pages, change nothing; exit 1 if any")
    args = parser.parse_args()
    pages = docs_tables.stale() if args.check else docs_tables.update()
    for page in pages:
        print(f"{'stale' if args.check else 'updated'}: {page}")
    sys.exit(1 if args.check and pages else 0)


if __name__ == "__main__":
    main()
