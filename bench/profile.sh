#!/usr/bin/env bash
# Profile the Tidings server with py-spy while the harness loads it.
#
#   bench/profile.sh OUT.txt [harness flags...]
#   bench/profile.sh /tmp/after.txt --sizes 10000            # WS broadcast to 10k
#   bench/profile.sh /tmp/before.txt --sizes 10000 --tidings-src /path/to/base/server
#
# Runs `harness.py --servers tidings --scenarios broadcast` (plus the flags
# given), waits until the server holds the subscribers' connections, then
# records 8 s of py-spy samples (collapsed stacks, 200/s) into OUT.txt and
# prints the top entries (bench/pyspy_top.py). Needs py-spy (bench/setup.sh).
# Only the processes this script starts are touched.
set -euo pipefail
out=$1; shift
here="$(cd "$(dirname "$0")" && pwd)"
py="${PYTHON:-python}"
spy="$(dirname "$(command -v "$py")")/py-spy"
[ -x "$spy" ] || spy=py-spy
"$py" "$here/harness.py" --no-ceiling --no-plot --servers tidings --scenarios broadcast \
    --warmup 2 --measure 14 "$@" > "$out.harness.log" 2>&1 &
harness=$!
server=""
for _ in $(seq 1 100); do
    server=$(pgrep -P "$harness" -f "tidings.cli serve" | head -1 || true)
    [ -n "$server" ] && break
    sleep 0.2
done
[ -n "$server" ] || { echo "no server started (see $out.harness.log)" >&2; wait "$harness"; exit 1; }
want=$(( $(grep -o -- '--sizes [0-9]*' <<<"$*" | grep -o '[0-9]*$' || echo 1000) ))
for _ in $(seq 1 600); do  # the subscribers connect (each one file descriptor)
    [ "$(ls "/proc/$server/fd" 2>/dev/null | wc -l)" -ge "$want" ] && break
    sleep 0.2
done
sleep 4  # into the measurement window
"$spy" record -p "$server" -d 8 -r 200 -f raw -o "$out" --nonblocking > "$out.py-spy.log" 2>&1
wait "$harness"
grep -E "^  tidings +broadcast" "$out.harness.log" || true
"$py" "$here/pyspy_top.py" "$out"
