#!/usr/bin/env bash
# One prepared GPU check for a short slot on a borrowed CUDA machine (under 8 minutes on one GPU):
# training and evaluation throughput in fp32, bf16 and fp16, the whole-grid benchmark, and peak memory.
# It installs nothing beyond the project itself (no dependencies are fetched) and prints ratios and examples/s
# with the GPU's name.
#
#   bash benchmarks/gpu_check.sh [--data-root DIR] [--dry-run]
#
# --data-root: the cl_benchmark folder (default ../shared/data/cl_benchmark, or $CL_BENCHMARK_DIR); on a machine
#              that gets only the repository, copy agnews/ and dbpedia/ into an ignored folder and point here.
# --dry-run:   on any machine (CPU too): checks the data and the Python environment, validates the grid, runs a
#              tiny throughput pass on the CPU, and prints every command it would run, training nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

data_root="${CL_BENCHMARK_DIR:-../shared/data/cl_benchmark}"
dry_run=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --data-root) data_root="$2"; shift ;;
    -h|--help) sed -n 2,14p "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (allowed: --data-root DIR, --dry-run)" >&2; exit 2 ;;
  esac
  shift
done
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

for part in agnews/train.json dbpedia/test.json; do
  if [ ! -f "$data_root/$part" ]; then
    echo "gpu_check.sh: $data_root/$part not found; pass --data-root with the cl_benchmark folder" >&2
    exit 2
  fi
done

if [ "$dry_run" -eq 0 ]; then
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . \
    || { echo "gpu_check.sh: installing the project failed" >&2; exit 1; }
  if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: no CUDA device; use --dry-run on a CPU machine" >&2
    exit 2
  fi
fi
python3 -c "import torch; print('torch', torch.__version__, '| GPU:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')"

# Each step has a time limit, so the whole check ends inside its slot even if one part hangs.
steps=(
  "150 python3 benchmarks/throughput.py --data-root $data_root --device cuda --precision fp32 --examples 512 --eval-examples 2048 --rounds 2 --eval-rounds 3"
  "75 python3 benchmarks/throughput.py --data-root $data_root --device cuda --precision bf16 --examples 512 --eval-examples 2048 --rounds 2 --eval-rounds 3 --skip-memory"
  "75 python3 benchmarks/throughput.py --data-root $data_root --device cuda --precision fp16 --examples 512 --eval-examples 2048 --rounds 2 --eval-rounds 3 --skip-memory"
  "150 python3 benchmarks/grid.py --data-root $data_root --device cuda"
)
started=$(date +%s)
for step in "${steps[@]}"; do
  limit="${step%% *}"
  command="${step#* }"
  if [ "$dry_run" -eq 1 ]; then
    echo "would run (limit ${limit} s): $command"
    continue
  fi
  echo "=== $command"
  timeout "$limit" $command || echo "gpu_check.sh: step exited $? (124: over its ${limit} s limit)"
done

if [ "$dry_run" -eq 1 ]; then
  echo "=== dry run: the grid validates, and a tiny throughput pass runs on the CPU"
  python3 benchmarks/grid.py --data-root "$data_root" --dry-run
  python3 benchmarks/throughput.py --data-root "$data_root" --device cpu --precision fp32 --examples 16 --eval-examples 16 \
    --rounds 1 --eval-rounds 1 --skip-memory --max-length 16 --batch-size 8
fi
echo "gpu_check.sh: done in $(( $(date +%s) - started )) s"
