#!/usr/bin/env bash
# The evidence of results/plan.md: on one data set and budget, the planned recipe against
# configs/amp.yaml with the same time budget added and against the hand-written peer, seeds 1
# and 2, one run at a time (give the machine to the runs). Resumable: a finished run is skipped.
#   bash experiments/plan_evidence.sh NAME MINUTES DATA_CONFIG [OVERLAY ...]
# e.g. bash experiments/plan_evidence.sh membrane 10 configs/data/membrane.yaml configs/data/membrane_by_slice.yaml
# The recipe is planned once, on this machine, into configs/recipes/NAME_MINUTESmin.yaml; on
# another machine, RECIPE=<path> plans it (once) there instead, e.g. beside the runs:
#   RECIPE=results/plan/membrane_10min/recipes/intel-xeon.yaml bash experiments/plan_evidence.sh ...
set -euo pipefail
name=$1 minutes=$2
shift 2
data=("$@")
recipe=${RECIPE:-configs/recipes/${name}_${minutes}min.yaml}
out=results/plan/${name}_${minutes}min
configs=()
for c in "${data[@]}"; do configs+=(--config "$c"); done
[ -f "$recipe" ] || { mkdir -p "$(dirname "$recipe")" && python -m segopt.plan "${configs[@]}" --minutes "$minutes" --out "$recipe"; }
for seed in 1 2; do
  python -m experiments.side_by_side --arm segopt --label planned --config "$recipe" --data-config "${data[@]}" --seeds "$seed" --out "$out"
  python -m experiments.side_by_side --arm segopt --label amp --config configs/amp.yaml --minutes "$minutes" --data-config "${data[@]}" --seeds "$seed" --out "$out"
  python -m experiments.side_by_side --arm peer --minutes "$minutes" --data-config "${data[@]}" --seeds "$seed" --out "$out"
done
