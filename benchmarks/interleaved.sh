#!/usr/bin/env bash
# Before/after overhead rounds, interleaved: each round runs queue_overhead.py and api_post.py
# (and, with WATCHERS=1, api_post.py --watchers 1) against the "old" tree, then the "new" one.
# This checkout's benchmark scripts run from inside each tree with PYTHONPATH naming it: `python -m`
# puts the current folder first on sys.path, so running from elsewhere would measure that folder.
# Then: python benchmarks/medians.py LOG
#
#   bash benchmarks/interleaved.sh OLD_TREE NEW_TREE [ROUNDS] > LOG
set -euo pipefail
old=$(cd "$1" && pwd); new=$(cd "$2" && pwd); rounds=${3:-4}
scripts=$(cd "$(dirname "$0")" && pwd)
for round in $(seq 1 "$rounds"); do
  for tree in old new; do
    dir=$old; [ "$tree" = new ] && dir=$new
    echo "== round $round $tree $(git -C "$dir" rev-parse --short HEAD) load $(cut -d' ' -f1-3 /proc/loadavg)"
    (cd "$dir" && PYTHONPATH=$dir python "$scripts/queue_overhead.py" --latency-jobs 20 --jobs 300 --trip-jobs 60 | tail -3)
    (cd "$dir" && PYTHONPATH=$dir python "$scripts/api_post.py" --requests 2000 --trip-requests 100 | tail -4)
    if [ "${WATCHERS:-0}" = 1 ]; then
      (cd "$dir" && PYTHONPATH=$dir python "$scripts/api_post.py" --requests 2000 --trip-requests 20 --watchers 1 | tail -4)
    fi
  done
done
