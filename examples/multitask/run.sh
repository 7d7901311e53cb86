#!/usr/bin/env bash
# The multi-task example end to end: data, a tiny random Llama, three rounds of FedBip.
#   examples/multitask/run.sh [WORKDIR] [ROUNDS]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${1:-/tmp/fedbip-multitask}
PY=${PYTHON:-python}
rm -rf "$WORK"
$PY "$HERE/make_data.py" "$WORK"
$PY "$HERE/make_model.py" "$WORK/model"
$PY "$HERE/run.py" "$WORK" --rounds "${2:-3}"
echo "done: $WORK/metrics.jsonl, $WORK/rounds/*/similarity.png"
