# shellcheck shell=bash
# Shared helpers for scripts/run.sh, scripts/test.sh and the Makefile.
# Sourced, not run: it defines functions and the variables below, nothing else.
#
#   ROOT     the repository root (this file's parent's parent)
#   PY       the Python that creates the virtualenv (>= 3.11): $PYTHON or python3
#   VENV     the virtualenv: $TIDINGS_VENV or $ROOT/.venv, reused when present
#
# Every helper is idempotent and cheap when there is nothing to do, so the
# scripts can call them on every run.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
VENV="${TIDINGS_VENV:-$ROOT/.venv}"

say() { printf '%s: %s\n' "${SCRIPT_NAME:-tidings}" "$*" >&2; }
die() { say "error: $*"; exit 1; }

# True when running under CI (CI=true or CI=1): a missing tool is then a failure.
is_ci() { [[ "${CI:-}" == "true" || "${CI:-}" == "1" ]]; }

# have_bin NAME: the program is installed (also looks in the sbin folders, where
# Debian puts mosquitto and which a non-root PATH often lacks).
have_bin() {
    command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" || -x "/sbin/$1" ]]
}

# ensure_debs PKG...: install Debian packages with apt-get. `apt-get update`
# runs once, and only when there is something to install. Package maintainer
# scripts are told not to start services (a system mosquitto on :1883 or redis
# on :6379 would squat the ports Tidings and its tests use), by a temporary
# /usr/sbin/policy-rc.d that is removed afterwards; an existing one is kept.
# Returns 1 (after saying why) when it cannot install: not root and no sudo.
ensure_debs() {
    (($# > 0)) || return 0
    local sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            say "missing Debian packages: $* (run as root or with passwordless sudo to install)"
            return 1
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        say "missing packages: $* (no apt-get here: install them yourself)"
        return 1
    fi
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\n# written by tidings scripts/lib.sh during apt-get install\nexit 101\n' \
            | "${sudo[@]}" tee "$policy" >/dev/null
        "${sudo[@]}" chmod 755 "$policy"
        made_policy=1
    fi
    say "installing Debian packages: $*"
    local rc=0
    if [[ -z "${_TIDINGS_APT_UPDATED:-}" ]]; then
        "${sudo[@]}" apt-get update -qq || rc=$?
        _TIDINGS_APT_UPDATED=1
    fi
    if ((rc == 0)); then
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "$@" >/dev/null || rc=$?
    fi
    if ((made_policy)); then
        "${sudo[@]}" rm -f "$policy"
    fi
    ((rc == 0)) || say "apt-get failed (exit $rc)"
    return "$rc"
}

# missing_debs "BIN:PKG"...: print the packages whose program is not installed.
missing_debs() {
    local pair
    for pair in "$@"; do
        have_bin "${pair%%:*}" || printf '%s\n' "${pair#*:}"
    done
}

venv_ok() {
    [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -m pip --version >/dev/null 2>&1
}

# venv_debs: print the Debian package needed to create the virtualenv, if any
# (Debian's python3 lacks ensurepip until python3-venv is installed).
venv_debs() {
    venv_ok && return 0
    "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1 || echo python3-venv
}

# ensure_venv: create $VENV with $PY unless it already works. On Debian the
# venv module needs the python3-venv package; it is installed when missing.
ensure_venv() {
    venv_ok && return 0
    command -v "$PY" >/dev/null 2>&1 || die "no $PY on PATH (Tidings needs Python >= 3.11)"
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PY is $("$PY" -V 2>&1); Tidings needs Python >= 3.11 (set PYTHON=...)"
    if ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        ensure_debs python3-venv || die "cannot create a virtualenv: install python3-venv"
    fi
    if [[ -e "$VENV" ]]; then
        say "$VENV is not a working virtualenv; recreating it"
        rm -rf "$VENV"
    fi
    say "creating virtualenv $VENV"
    "$PY" -m venv "$VENV"
}

# ensure_installed [EXTRAS]: `pip install -e '.[EXTRAS]'` into $VENV, skipped
# when pyproject.toml has not changed since the last install of those extras.
ensure_installed() {
    local extras="${1:-}" spec="$ROOT" stamp hash
    [[ -z "$extras" ]] || spec="${ROOT}[${extras}]"
    stamp="$VENV/.tidings-installed${extras:+-${extras//,/-}}"
    hash="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1) $ROOT"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$hash" ]]; then
        return 0
    fi
    say "pip install -e '.${extras:+[$extras]}' into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$spec"
    printf '%s\n' "$hash" >"$stamp"
}
