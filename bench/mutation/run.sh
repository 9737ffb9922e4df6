#!/usr/bin/env bash
# Mutation testing of cpsample's core logic (docs/testing.md): mutmut runs the mutants of bench/mutation/scope.txt
# against the fast tests named in pyproject.toml's [tool.mutmut], and bench/mutation/summary.py writes the counts per
# file and function and every survivor's diff to bench/results/mutation/NAME.txt (and each mutant's status to
# NAME.json). Usage: bash bench/mutation/run.sh [NAME [BASE]]; NAME defaults to "latest". With BASE (an earlier run's
# NAME), only the mutants BASE did not see killed are tried again, and BASE's killed ones count as killed: the quick
# check after adding tests, refused once the source has changed. Needs `pip install mutmut` (3.8 or later). Every run
# starts afresh in mutants/ (git-ignored): results cached from an earlier run would not see tests added since.
set -euo pipefail
cd "$(dirname "$0")/../.."
name=${1:-latest}
base=${2:-}
# One process at a time, one thread each: the tests' tiny models run fastest so, and the machine stays usable.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
if [ -n "$base" ]; then
  mapfile -t mutants < <(python bench/mutation/summary.py - --not-killed "bench/results/mutation/$base.json")
  summary_args=(--base "bench/results/mutation/$base.json")
else
  mapfile -t mutants < <(grep -v '^#' bench/mutation/scope.txt | grep -v '^[[:space:]]*$')
  summary_args=()
fi
rm -rf mutants && mkdir mutants
started=$(date +%s)
mutmut run --max-children "${MUTMUT_CHILDREN:-1}" "${mutants[@]}" > mutants/run.log 2>&1 \
  || { tail -n 40 mutants/run.log; exit 1; }
seconds=$(( $(date +%s) - started ))
python bench/mutation/summary.py "bench/results/mutation/$name.txt" --seconds "$seconds" "${summary_args[@]}"
