#!/usr/bin/env bash
# Coordinator job for cron: aggregate the round in progress once enough task vectors have arrived.
# Sites drop <client>.safetensors into WORKSPACE/rounds/NNNN/deltas/ (uploads under a hidden name, or
# plainly: a half-copied file is seen as incomplete and waited for); clients that sent nothing keep their
# previous adapter. Safe to run as often as you like, in every state: it exits 0 when it aggregated,
# when the round is already done and when it is still waiting; it changes nothing it has written before.
#
#   coordinator-cron.sh WORKSPACE [MIN_CLIENTS]
#
# fedbip's exit codes: 0 done or nothing to do, 75 not ready yet (this job then exits 0), 3 round
# conflict (a finished round's inputs changed: needs a person, see `fedbip status`), 2 bad input.
set -euo pipefail
WS=${1:?usage: coordinator-cron.sh WORKSPACE [MIN_CLIENTS]}
MIN=${2:-2}
FEDBIP=${FEDBIP:-fedbip}
LOGS="$WS/logs"   # outside rounds/: rounds/ holds only what belongs to the federation

# The round in progress is the newest round folder (aggregating round T opens round T+1).
latest=$( { find "$WS/rounds" -mindepth 1 -maxdepth 1 -type d -name '[0-9][0-9][0-9][0-9]' -printf '%f\n' 2>/dev/null || true; } \
          | sort | tail -n 1)
[ -n "$latest" ] || exit 0                                  # idle: no round yet
round=$((10#$latest))

step() {  # step NAME ARGS...: run `fedbip NAME`, keep its JSON in logs/; 75 (waiting) ends the job with 0
  local name=$1 rc=0 result
  shift
  result=$($FEDBIP "$name" -r "$round" -w "$WS" --min-clients "$MIN" --json "$@") || rc=$?
  if [ "$rc" -eq 75 ]; then exit 0; fi
  if [ "$rc" -ne 0 ]; then echo "fedbip $name -r $round: exit $rc" >&2; exit "$rc"; fi
  if ! grep -q '"skipped": true' <<<"$result"; then
    mkdir -p "$LOGS"
    printf '%s\n' "$result" > "$LOGS/$name-$latest.json"
  fi
}
step similarity
step aggregate
