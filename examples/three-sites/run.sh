#!/usr/bin/env bash
# FedBip rounds across three sites and a coordinator, each in its own folder.
# Only adapters and task vectors cross between folders, as they would between institutions
# (here with cp; in practice scp, rsync or a shared drive).
#
#   examples/three-sites/run.sh [WORKDIR]
#
# Rerunnable in every state: stopped half-way it carries on where it stopped, and once complete a
# rerun changes nothing (each fedbip step skips what it has done, files are only copied where they
# are missing, and each evaluation is logged once). FRESH=1 starts over. SET adds options to every
# step (e.g. SET="--set model.path=/models/other").
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${1:-/tmp/fedbip-three-sites}
FEDBIP=${FEDBIP:-fedbip}
PYTHON=${PYTHON:-python}
SITES="site_a site_b site_c"
ROUNDS=${ROUNDS:-2}
SET=${SET:-}
TRAIN="--set model.max_length=64 --set training.epochs=2 --set training.batch_size=8 --set training.learning_rate=1e-3 --set training.head_learning_rate=1e-2 $SET"

put() {  # put SRC DST: copy a file or folder to DST unless it is there, under a hidden name, then rename it
  local src=$1 dst=$2 tmp
  [ -e "$dst" ] && return 0
  mkdir -p "$(dirname "$dst")"
  tmp="$(dirname "$dst")/.$(basename "$dst").partial"   # fedbip ignores hidden names: never half a file
  rm -rf "$tmp"
  cp -r "$src" "$tmp"
  mv "$tmp" "$dst"
}

logged() {  # logged WS CLIENT ROUND: whether metrics.jsonl already holds this client's test result for ROUND
  grep -qF "\"client\": \"$2\", \"round\": $3, \"split\": \"test\"" "$1/metrics.jsonl" 2>/dev/null
}

if [ "${FRESH:-0}" = 1 ]; then rm -rf "$WORK"; fi
[ -f "$WORK/coordinator/fedbip.yaml" ] || "$PYTHON" "$HERE/make_data.py" "$WORK"
C="$WORK/coordinator"

# The coordinator makes the shared initial adapter once and sends it to every site as its round-0 start.
$FEDBIP initial -w "$C" $SET
for s in $SITES; do
  put "$C/initial" "$WORK/$s/rounds/0000/start/$s"
done

for ((r = 0; r < ROUNDS; r++)); do
  R=$(printf '%04d' "$r"); N=$(printf '%04d' $((r + 1)))
  for s in $SITES; do                                    # at each site
    $FEDBIP finetune -c "$s" -r "$r" -w "$WORK/$s" $TRAIN
    $FEDBIP taskvec  -c "$s" -r "$r" -w "$WORK/$s" $SET
    put "$WORK/$s/rounds/$R/deltas/$s.safetensors" "$C/rounds/$R/deltas/$s.safetensors"   # site -> coordinator
  done
  $FEDBIP similarity -r "$r" -w "$C" $SET                # at the coordinator
  $FEDBIP aggregate  -r "$r" -w "$C" $SET
  for s in $SITES; do                                    # coordinator -> each site: its own adapter
    put "$C/rounds/$N/start/$s" "$WORK/$s/rounds/$N/start/$s"
    logged "$WORK/$s" "$s" "$((r + 1))" || $FEDBIP eval -c "$s" -r "$((r + 1))" -w "$WORK/$s" $TRAIN
  done
done
echo "done: see $C/rounds/*/similarity.png and $WORK/site_*/metrics.jsonl"
