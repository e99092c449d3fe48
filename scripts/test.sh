#!/usr/bin/env bash
# The one test command (README, "Set up"): everything the tests need, then the tests.
#
#   ./scripts/test.sh              # the whole suite: pytest over tests/, then client_js
#   ./scripts/test.sh ARGS...      # only pytest, with ARGS instead of tests/ (e.g. -k subscribe)
#
# On a fresh Debian machine with Python >= 3.11, Node 20 and npm it:
#   1. installs the Debian packages in DEB_DEPS whose program is missing
#      (apt-get update once, only when something is missing; needs root or sudo);
#   2. creates .venv (reused when present) and `pip install -e '.[test]'`
#      (skipped while pyproject.toml is unchanged);
#   3. installs client_js's npm packages when client_js/package.json exists;
#   4. runs pytest over tests/ and, when client_js has tests, `node --test`.
#
# CI=true (set by .ci/run's caller) is exported to the tests: under CI a
# missing service is a failure, never a skip. Here too: under CI a package
# that cannot be installed, or any skipped test, fails the run; and pytest
# collecting no tests always does.
set -euo pipefail

SCRIPT_NAME="test.sh"
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

# Programs the tests drive, as "program:debian-package". Later issues append here.
DEB_DEPS=(
    "redis-server:redis-server"          # Redis store and bus (cluster issue)
    "redis-cli:redis-tools"              # --cluster create for the Redis Cluster tests
    "mosquitto:mosquitto"                # reference broker (MQTT issue)
    "mosquitto_sub:mosquitto-clients"    # real MQTT clients (MQTT issue)
    "chromium:chromium"                  # browser tests of client_js
    "openssl:openssl"                    # self-signed certificates for the TLS tests
)

if [[ -v CI ]]; then
    export CI
fi

install_system_deps() {
    local missing
    mapfile -t missing < <(missing_debs "${DEB_DEPS[@]}"; venv_debs)
    ((${#missing[@]} > 0)) || return 0
    if ! ensure_debs "${missing[@]}"; then
        is_ci && die "cannot install ${missing[*]} under CI"
        say "warning: continuing without ${missing[*]}; tests that need them will skip"
        return 0
    fi
    mapfile -t missing < <(missing_debs "${DEB_DEPS[@]}")
    if ((${#missing[@]} > 0)); then
        is_ci && die "still missing after apt-get: ${missing[*]}"
        say "warning: still missing after apt-get: ${missing[*]}"
    fi
}

install_client_js() {
    [[ -f client_js/package.json ]] || return 0
    have_bin npm || die "client_js needs npm (Node 20) on PATH"
    local stamp=client_js/node_modules/.tidings-installed
    if [[ -f "$stamp" && ! client_js/package.json -nt "$stamp" ]] \
        && [[ ! -f client_js/package-lock.json || ! client_js/package-lock.json -nt "$stamp" ]]; then
        return 0
    fi
    if [[ -f client_js/package-lock.json ]]; then
        say "npm ci in client_js"
        (cd client_js && npm ci --no-audit --no-fund --loglevel=error)
    else
        say "npm install in client_js"
        (cd client_js && npm install --no-audit --no-fund --loglevel=error)
    fi
    mkdir -p client_js/node_modules
    touch "$stamp"
}

# The client's test files: *.test.js (and .mjs/.cjs) anywhere in client_js but
# node_modules: unit tests in test/, integration tests against a real server in
# test/integration/, browser tests (Chromium) in test/browser/. Helper modules
# (test/helpers/) are not test files.
client_js_tests() {
    [[ -d client_js ]] || return 0
    find client_js -name node_modules -prune -o -type f \
        \( -name '*.test.js' -o -name '*.test.mjs' -o -name '*.test.cjs' \) \
        -print | sort
}

# pytest over tests/ (or the given ARGS). Exit 5 (nothing collected) is a
# failure. Under CI a skipped test is a failure too: the summary line is read
# back from a copy of the output.
run_pytest() {
    local rc=0 log
    (($# > 0)) || set -- tests/
    if ! is_ci; then
        "$VENV/bin/python" -m pytest "$@" || rc=$?
    else
        log="$(mktemp)"
        "$VENV/bin/python" -m pytest --color=no "$@" 2>&1 | tee "$log" || rc=${PIPESTATUS[0]}
        if ((rc == 0)) && grep -E '[0-9]+ (passed|skipped|deselected).* in [0-9.]+s' "$log" \
                | tail -n 1 | grep -Eq '[0-9]+ skipped'; then
            rm -f "$log"
            die "FAILED: tests were skipped under CI=$CI (see the skip reasons above)"
        fi
        rm -f "$log"
    fi
    case "$rc" in
        0) ;;
        5) die "FAILED: pytest collected no tests (exit 5)" ;;
        *) die "FAILED: pytest exit $rc" ;;
    esac
}

run_node_tests() {
    local files
    mapfile -t files < <(client_js_tests)
    if ((${#files[@]} == 0)); then
        say "no client_js tests"
        return 0
    fi
    have_bin node || die "client_js tests need node (Node 20) on PATH"
    local rc=0 log
    log="$(mktemp)"
    (cd client_js && node --test "${files[@]#client_js/}") 2>&1 | tee "$log" || rc=${PIPESTATUS[0]}
    if ((rc == 0)) && is_ci && grep -Eq '^# skipped [1-9]' "$log"; then
        rm -f "$log"
        die "FAILED: client_js tests were skipped under CI=$CI"
    fi
    rm -f "$log"
    ((rc == 0)) || die "FAILED: node --test exit $rc"
}

main() {
    install_system_deps
    ensure_venv
    ensure_installed test
    export PATH="$VENV/bin:$PATH" VIRTUAL_ENV="$VENV"
    if (($# > 0)); then
        run_pytest "$@"
        echo "test.sh: OK: pytest $*"
        return 0
    fi
    install_client_js
    run_pytest
    run_node_tests
    echo "test.sh: OK: all tests passed${CI:+ (CI=$CI)}"
}

main "$@"
