"""Convert, once and knowingly, a checkpoint that the scripts refuse to read because it holds pickled objects.

    python scripts/convert_checkpoint.py runs/old/last.pt [more.pt ...]

The scripts read every checkpoint with torch.load(weights_only=True): tensors and plain types only, because unpickling
anything else can run code (docs/security.md). A checkpoint written before that rule (an agent's reward scale kept as
a stable-baselines3 object) is refused with a line naming this command. This script reads it with weights_only=True
too, allowing only the types older versions wrote (numpy arrays and scalars, stable-baselines3's RunningMeanStd:
rebuilt from their fields, no other function called), and rewrites it in place as tensors and plain types (numpy
arrays as tensors, a running mean and std as its three numbers); a file that holds anything else is refused and left
as it was.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.errors import UserError, run_cli  # noqa: E402
from common.files import convertible_globals, plain, save_checkpoint  # noqa: E402


def plain_state(value):
    """`value` as tensors and plain types: a stable-baselines3 RunningMeanStd becomes its mean, var and count
    (agents/ppo.py's running_std_state); the rest as common.files.plain writes every checkpoint."""
    if isinstance(value, dict):
        return {key: plain_state(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain_state(item) for item in value)
    if type(value).__name__ == "RunningMeanStd":
        return {"mean": float(value.mean), "var": float(value.var), "count": float(value.count)}
    return plain(value)


def convert(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass the checkpoint the scripts refused.")
    try:
        with torch.serialization.safe_globals(convertible_globals()):  # nothing that runs code
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        converted = plain_state(checkpoint)
    except TypeError as err:
        raise UserError(f"{path} holds an object this script cannot convert ({err}); it was left as it was.") from None
    except Exception as err:
        raise UserError(f"cannot read {path} ({type(err).__name__}: {err}); it was left as it was.") from None
    save_checkpoint(path, converted)
    return f"converted {path}: tensors and plain types only; the scripts now read it with weights_only=True"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path, help="checkpoints (.pt) you trust, rewritten in place")
    for path in parser.parse_args(argv).checkpoints:
        print(convert(path))


if __name__ == "__main__":
    run_cli(main)
