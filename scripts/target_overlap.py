"""How distinct are the selections of the targets 0, 0.1, ..., 1 on a run's difficulty scores, per target scale?

    python scripts/target_overlap.py runs/x/difficulty.npy --fraction 0.6

For each scale (absolute: select_around the target value; quantile: the band of ranks the target addresses) prints
the number of distinct selections among the 11 targets and the overlap (|A and B| / |A or B|) of neighbouring ones.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curriculum_dataloader import TARGET_SCALES, Adaptive, CurriculumSpec, rank_quantiles, select_around  # noqa: E402


def selection(scores: np.ndarray, target: float, fraction: float, scale: str) -> np.ndarray:
    if scale == "quantile":
        adaptive = Adaptive(CurriculumSpec("adaptive", fraction=fraction))
        return select_around(rank_quantiles(scores), adaptive.rank_target(target), fraction)
    return select_around(scores, target, fraction)


def overlaps(scores: np.ndarray, fraction: float, scale: str) -> tuple[int, list[float]]:
    """(distinct selections, overlap of each neighbouring pair) over the targets 0, 0.1, ..., 1."""
    chosen = [set(selection(scores, t, fraction, scale).tolist()) for t in np.linspace(0, 1, 11)]
    distinct = len({frozenset(c) for c in chosen})
    return distinct, [len(a & b) / len(a | b) for a, b in zip(chosen[:-1], chosen[1:], strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scores", help="a difficulty.npy of a curriculum run")
    parser.add_argument("--fraction", type=float, default=0.6, help="fraction of the data each selection keeps")
    args = parser.parse_args()
    scores = np.load(args.scores)
    print(f"{len(scores)} scores in [{scores.min():.3f}, {scores.max():.3f}], fraction {args.fraction}")
    for scale in TARGET_SCALES:
        distinct, pairs = overlaps(scores, args.fraction, scale)
        print(
            f"{scale:>8}: {distinct} distinct selections of 11; neighbour overlap "
            + " ".join(f"{p:.2f}" for p in pairs)
        )


if __name__ == "__main__":
    main()
