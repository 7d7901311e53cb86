#!/usr/bin/env bash
# Coordinator job for cron: aggregate the newest round once enough task vectors have arrived.
# Sites drop <client>.safetensors into WORKSPACE/rounds/NNNN/deltas/; clients that sent nothing
# keep their previous adapter. Safe to run often: a round that already has weights.json is skipped.
#
#   coordinator-cron.sh WORKSPACE [MIN_CLIENTS]
set -euo pipefail
WS=${1:?usage: coordinator-cron.sh WORKSPACE [MIN_CLIENTS]}
MIN=${2:-2}
FEDBIP=${FEDBIP:-fedbip}
latest=$(ls -1 "$WS/rounds" 2>/dev/null | grep -E '^[0-9]{4}$' | sort | tail -n 1 || true)
[ -n "$latest" ] || exit 0
dir="$WS/rounds/$latest"
[ -f "$dir/weights.json" ] && exit 0
arrived=$(ls -1 "$dir/deltas"/*.safetensors 2>/dev/null | wc -l)
[ "$arrived" -ge "$MIN" ] || exit 0
round=$((10#$latest))
$FEDBIP similarity -r "$round" -w "$WS" --json > "$dir/similarity.log"
$FEDBIP aggregate -r "$round" -w "$WS" --min-clients "$MIN" --json > "$dir/aggregate.log"
