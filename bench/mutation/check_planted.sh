#!/usr/bin/env bash
# Plant each known bug of bench/mutation/planted/ in a scratch copy of this checkout and run the tests that must catch
# it. A bug whose tests still pass is a hole in the suite: the script says so and exits 1.
#   bash bench/mutation/check_planted.sh            # every planted bug
#   bash bench/mutation/check_planted.sh 2 5        # only patches whose name starts with 2 or 5
set -uo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

# Which tests must fail for each planted bug (pytest arguments).
declare -A TESTS=(
  [1_x_t_push_reversed]="tests/test_push_direction.py"
  [2_whole_push_reversed]="tests/test_push_direction.py -k x_t_push"
  [3_half_precision_does_nothing]="tests/test_push_direction.py -k half_precision"
  [4_calibrate_saves_the_last_finalist]="tests/test_workflows.py -k 'calibrate_cli_measures or real_goal'"
  [5_cli_never_reuses_cached_batches]="tests/test_reliability.py -k rerun_resumes"
  [6_denoiser_resume_forgets_the_ema]="tests/test_training.py -k killed_run_resumes_to_the_same_weights"
)

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
holes=0
for patch in bench/mutation/planted/*.patch; do
  name=$(basename "$patch" .patch)
  if [ $# -gt 0 ] && ! printf '%s\n' "$@" | grep -qx "${name%%_*}"; then continue; fi
  copy="$scratch/$name"
  mkdir -p "$copy"
  # the working tree as it is (tracked and untracked files, not what git ignores)
  git ls-files -co --exclude-standard -z | (cd "$repo" && xargs -0 tar cf -) | tar xf - -C "$copy"
  if ! (cd "$copy" && patch -s -p1 < "$repo/$patch"); then
    echo "$name: the patch no longer applies; update it to today's code"; holes=$((holes + 1)); continue
  fi
  run="PYTHONPATH=src OMP_NUM_THREADS=1 python -m pytest -q -x -p no:cacheprovider ${TESTS[$name]}"
  if (cd "$copy" && eval "$run" > "$scratch/$name.log" 2>&1); then
    echo "$name: NOT CAUGHT - ${TESTS[$name]} passed with the bug planted"; holes=$((holes + 1))
  else
    echo "$name: caught by $(grep -m1 -oE '^FAILED [^ ]+' "$scratch/$name.log" | cut -d' ' -f2)"
  fi
done
exit $((holes > 0))
