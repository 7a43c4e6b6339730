#!/usr/bin/env bash
# A rule's paired ablation beside results/plan.md's series: the planned recipe with planned keys
# set otherwise, seeds 1 and 2, one run at a time, into the same series folder, so that
# experiments/plan_report.py judges it against the planned arm (and amp.yaml and the peer) by the
# same seed-range rule. Resumable: a finished run is skipped.
#   bash experiments/plan_ablation.sh NAME MINUTES LABEL FLAG [FLAG ...] DATA_CONFIG [OVERLAY ...]
# Every argument from FLAG on that starts with -- is a flag; the first that does not is the data config.
# e.g. bash experiments/plan_ablation.sh magnetic_tiles 10 no-rare-images --data.rare_image_share=0 configs/data/magnetic_tiles.yaml
# The recipe is the one experiments/plan_evidence.sh planned: configs/recipes/NAME_MINUTESmin.yaml,
# or RECIPE=<path> as given to it (the recipe planned on another machine).
# When the planned arm ran on another host (another session), a time budget buys the ablation
# more or fewer epochs than it had; --trainer.max_epochs=N (the planned arm's epochs) caps it there,
# and the summary says when the hosts' speeds differ.
# EMA off: --trainer.callbacks.init_args.decay=0.0 sets the recipe's last callback, EMAWeightAveraging,
# to decay 0, where its average is the current weights at every step.
set -euo pipefail
name=$1 minutes=$2 label=$3
shift 3
flags=()
while [ $# -gt 0 ] && [[ $1 == --* ]]; do flags+=("--segopt-arg=$1"); shift; done
[ ${#flags[@]} -gt 0 ] && [ $# -gt 0 ] || { echo "error: give at least one --flag and a data config, e.g. $name $minutes LABEL --data.rare_image_share=0 configs/data/$name.yaml" >&2; exit 1; }
recipe=${RECIPE:-configs/recipes/${name}_${minutes}min.yaml}
[ -f "$recipe" ] || { echo "error: $recipe does not exist; run experiments/plan_evidence.sh $name $minutes first" >&2; exit 1; }
for seed in 1 2; do
  python -m experiments.side_by_side --arm segopt --label "$label" --config "$recipe" "${flags[@]}" \
    --data-config "$@" --seeds "$seed" --out "results/plan/${name}_${minutes}min"
done
