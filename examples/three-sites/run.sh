#!/usr/bin/env bash
# Two FedBip rounds across three sites and a coordinator, each in its own folder.
# Only adapters and task vectors cross between folders, as they would between institutions
# (here with cp; in practice scp, rsync or a shared drive).
#
#   examples/three-sites/run.sh [WORKDIR]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${1:-/tmp/fedbip-three-sites}
FEDBIP=${FEDBIP:-fedbip}
SITES="site_a site_b site_c"
ROUNDS=${ROUNDS:-2}
TRAIN="--set model.max_length=64 --set training.epochs=2 --set training.batch_size=8 --set training.learning_rate=1e-3 --set training.head_learning_rate=1e-2"

rm -rf "$WORK"
python "$HERE/make_data.py" "$WORK"
C="$WORK/coordinator"

# The coordinator makes the shared initial adapter once and sends it to every site as its round-0 start.
$FEDBIP initial -w "$C"
for s in $SITES; do
  mkdir -p "$WORK/$s/rounds/0000/start"
  cp -r "$C/initial" "$WORK/$s/rounds/0000/start/$s"
done

for ((r = 0; r < ROUNDS; r++)); do
  R=$(printf '%04d' "$r"); N=$(printf '%04d' $((r + 1)))
  mkdir -p "$C/rounds/$R/deltas"
  for s in $SITES; do                                    # at each site
    $FEDBIP finetune -c "$s" -r "$r" -w "$WORK/$s" $TRAIN
    $FEDBIP taskvec  -c "$s" -r "$r" -w "$WORK/$s"
    cp "$WORK/$s/rounds/$R/deltas/$s.safetensors" "$C/rounds/$R/deltas/"   # site -> coordinator
  done
  $FEDBIP similarity -r "$r" -w "$C"                     # at the coordinator
  $FEDBIP aggregate  -r "$r" -w "$C"
  for s in $SITES; do                                    # coordinator -> each site: its own adapter
    mkdir -p "$WORK/$s/rounds/$N/start"
    cp -r "$C/rounds/$N/start/$s" "$WORK/$s/rounds/$N/start/$s"
    $FEDBIP eval -c "$s" -r "$((r + 1))" -w "$WORK/$s" $TRAIN
  done
done
echo "done: see $C/rounds/*/similarity.png and $WORK/site_*/metrics.jsonl"
