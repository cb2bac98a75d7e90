#!/usr/bin/env bash
# The three-scenario comparison of docs/results/scenarios.md, in one command: for each of class-, task- and domain-incremental,
# tune every strategy on the validation splits (the `search:` block of scenarios.yaml), run the tuned strategies with
# 5 seeds on the test splits, and print the comparison (confidence intervals, significance marks).
#   bash experiments/scenarios.sh [--data-root DIR] [any other `cl-harness run` option, e.g. --tracking-uri URI]
# A killed run resumes where it stopped when started again. Runs from the repository root or anywhere else.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
args=("$@")
if [[ " ${args[*]-} " != *" --data-root "* ]]; then
  args+=(--data-root "$here/../../shared/data/cl_benchmark")
fi
for scenario in class task domain; do
  cl-harness run "$here/scenarios.yaml" --set "stream=../streams/local/scenarios_$scenario.yaml" \
    --set "name=scenarios-$scenario" "${args[@]}"
done
