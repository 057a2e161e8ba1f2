#!/usr/bin/env bash
# Fresh machine -> lint + the whole test suite, a real local SLURM cluster included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# DeepSpeedCPUAdam compiles once (about a minute); keep the build for the rest of the run
# (compiled into ~/.cache/torch_extensions, torch's default, so later runs on the machine reuse it)
export DS_ACCELERATOR=cpu

ruff check pipeline tests scripts
ruff format --check pipeline tests scripts

# a real SLURM (slurmctld + 2 emulated slurmd nodes) for tests/slurm; needs root for apt/munge
if [ "$(id -u)" = 0 ] && [ "${PIPELINE_SLURM:-1}" = 1 ]; then
  bash scripts/slurm_cluster.sh up --nodes 2
  trap 'bash scripts/slurm_cluster.sh down || true' EXIT
  export PIPELINE_SLURM=1
else
  echo "not root: SLURM tests will be reported as skipped" >&2
  export PIPELINE_SLURM=0
fi
python -m pytest tests "$@"
