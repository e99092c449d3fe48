#!/usr/bin/env bash
# Install what the benchmark harness needs beside Tidings itself:
# the reference servers (Debian's nats-server and mosquitto, Node's `ws`
# package) and matplotlib for the plot. Idempotent; safe to run again.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

need_apt=()
command -v nats-server >/dev/null 2>&1 || need_apt+=(nats-server)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
command -v taskset >/dev/null 2>&1 || need_apt+=(util-linux)
if [ ${#need_apt[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
# mosquitto's Debian package starts a system service on :1883; the harness
# runs its own instance on a free port, so the system one is not needed.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null; then
    echo "note: a system mosquitto service is running; the harness does not use it" >&2
fi

if [ ! -d "$here/refservers/node_ws/node_modules/ws" ]; then
    (cd "$here/refservers/node_ws" && npm install --no-audit --no-fund --silent)
fi

# The Python that runs the harness: $PYTHON, else the project venv that the
# Makefile exports (TIDINGS_VENV), else `python` on PATH.
py="${PYTHON:-}"
if [ -z "$py" ] && [ -n "${TIDINGS_VENV:-}" ] && [ -x "$TIDINGS_VENV/bin/python" ]; then
    py="$TIDINGS_VENV/bin/python"
fi
py="${py:-python}"
"$py" -c "import matplotlib" 2>/dev/null || "$py" -m pip install -q 'matplotlib>=3.7'
"$py" -c "import uvloop, websockets, aiohttp, jwt" || "$py" -m pip install -q -e "$here/..[bench]"
# py-spy: the sampling profiler for the server under load (bench/README.md, "Profiling")
[ -x "$(dirname "$py")/py-spy" ] || command -v py-spy >/dev/null 2>&1 || "$py" -m pip install -q py-spy
echo "bench setup done"
