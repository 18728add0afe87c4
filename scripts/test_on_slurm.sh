#!/usr/bin/env bash
# The sweeps against a real single-node Slurm (tests/test_slurm.py), as root: installs Debian's slurmctld, slurmd,
# slurm-client and munge when they are absent, then runs the test, which brings the cluster up in its own temporary
# folder on free ports (munged, slurmctld, slurmd; one node with this machine's CPUs and two GPUs that are device
# nodes) and stops it at the end. About 4 minutes on 2 busy cores (docs/sweeps.md); not part of `python -m pytest`.
#
#   sudo PYTHON="$(command -v python)" scripts/test_on_slurm.sh     # from the project's activated environment
#   scripts/test_on_slurm.sh -x -k refuses                           # as root; extra flags go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null ||
    ! command -v sbatch >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge
fi
KD_TEST_SLURM=1 exec "${PYTHON:-python}" -m pytest tests/test_slurm.py "$@"
