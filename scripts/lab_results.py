"""Gather the lab's runs (sweep.py lab) into one CSV row each and print its tables; or print them from a stored CSV.

    python scripts/lab_results.py runs/lab/*-t*-d*-s*/ --out runs/lab        # lab-runs.csv and lab.md there
    python scripts/lab_results.py --csv docs/results/lab-runs.csv            # the tables of the stored results
    python scripts/lab_results.py runs/lab-pilot/*/ --out runs/lab-pilot --pilot   # validation only (the pilot)

The tables: each variant's rows over the (teacher, draw) cells, the protocol's family of comparisons (paired over the
cells, Holm-corrected, ties by two one-sided tests at +-0.5 points), the same at the last epoch, the clean-validation
controls and the share of the noise's cost the tuned gate recovers (docs/curriculum.md#the-lab-protocol). `--pilot`
reads validation accuracies only: a pilot never looks at the test split.
"""

import argparse
import sys
from functools import cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis import lab  # noqa: E402
from common.errors import UserError, run_cli  # noqa: E402
from data.splits import load_data  # noqa: E402

TITLES = {"lab-clean": "Clean labels", "lab-symmetric": "30% symmetric noise", "lab-confusable": "30% confusable noise",
          "lab-family": "The protocol's family (test top-1, best-validation checkpoint)",
          "lab-family-last": "The same at the last epoch", "lab-controls": "Controls: clean validation labels",
          "lab-shares": "Share of the noise's cost recovered"}  # fmt: skip


@cache
def train_size(data: str) -> int:
    return len(load_data(data).train)


def markdown(tables: dict) -> str:
    return "\n\n".join(f"**{TITLES[name]}**\n\n{table}" for name, table in tables.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="finished lab run folders (<variant>-<row>-t<T>-d<D>-s<S>)")
    parser.add_argument("--out", help="folder for lab-runs.csv (and lab-family.png)")
    parser.add_argument("--csv", help="read the rows from this CSV instead of run folders")
    parser.add_argument("--pilot", action="store_true", help="validation only: the pilot's table")
    parser.add_argument("--cells", type=int, default=6, help="--pilot: the units the detectable difference is for")
    args = parser.parse_args()
    if bool(args.runs) == bool(args.csv):
        raise UserError("give either run folders or --csv FILE.")
    rows = lab.read_csv(Path(args.csv)) if args.csv else lab.collect(args.runs, train_size)
    if args.pilot:  # never read the test split's figures
        rows = [{**row, "test_best": "", "test_last": ""} for row in rows]
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        lab.write_csv(rows, out / ("pilot-runs.csv" if args.pilot else "lab-runs.csv"))
    if args.pilot:
        print(lab.pilot_table(rows, args.cells))
        return
    summary = lab.summarise(rows)
    if args.out:
        lab.plot_family(summary["family"], Path(args.out) / "lab-family.png")
    print(markdown(summary["tables"]))


if __name__ == "__main__":
    run_cli(main)
