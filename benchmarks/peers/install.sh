#!/bin/sh
# Install the supervisors that benchmarks/peers.py compares omnitron with, from
# their package registries, into a scratch directory (default /tmp/omnitron-peers,
# or $1).  Each peer is installed on its own; one that fails is written to
# $DIR/skipped/<peer> with the reason, and the benchmark reports it as skipped.
#
#   supervisord, circus   PyPI, into the venv $DIR/venv
#   PM2                   npm, into $DIR/node (needs node and npm)
#   Erlang/OTP            Debian's erlang-nox (apt-get; needs root), system-wide
#
# Usage: sh benchmarks/peers/install.sh [DIR]
set -u

DIR=${1:-${OMNITRON_PEERS:-/tmp/omnitron-peers}}
PYTHON=${PYTHON:-python3}
mkdir -p "$DIR/skipped"
LOG="$DIR/install.log"
: >"$LOG"

skip() { # peer reason
    printf '%s\n' "$2" >"$DIR/skipped/$1"
    printf 'skipped %s: %s\n' "$1" "$2" >&2
}

ok() {
    rm -f "$DIR/skipped/$1"
    printf 'installed %s\n' "$1" >&2
}

# --- PyPI: supervisor and circus, in a venv of their own
if "$PYTHON" -m venv "$DIR/venv" >>"$LOG" 2>&1; then
    for peer in supervisor circus; do
        if "$DIR/venv/bin/pip" install --disable-pip-version-check -q "$peer" >>"$LOG" 2>&1; then
            ok "$peer"
        else
            skip "$peer" "pip install $peer failed (see $LOG)"
        fi
    done
else
    skip supervisor "$PYTHON -m venv failed (see $LOG)"
    skip circus "$PYTHON -m venv failed (see $LOG)"
fi

# --- npm: pm2, a local install
if ! command -v npm >/dev/null 2>&1; then
    skip pm2 "npm not found"
else
    mkdir -p "$DIR/node"
    if (cd "$DIR/node" && npm install --no-audit --no-fund --silent pm2) >>"$LOG" 2>&1; then
        ok pm2
    else
        skip pm2 "npm install pm2 failed (see $LOG)"
    fi
fi

# --- Debian: erlang-nox (escript, erlc and the OTP libraries)
if command -v escript >/dev/null 2>&1 && command -v erlc >/dev/null 2>&1; then
    ok erlang
elif ! command -v apt-get >/dev/null 2>&1; then
    skip erlang "no escript/erlc and no apt-get to install erlang-nox"
elif [ "$(id -u)" -ne 0 ]; then
    skip erlang "no escript/erlc; installing erlang-nox needs root (apt-get)"
else
    if apt-get update >>"$LOG" 2>&1 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends erlang-nox erlang-dev >>"$LOG" 2>&1 &&
        command -v escript >/dev/null 2>&1; then
        ok erlang
    else
        skip erlang "apt-get install erlang-nox failed (see $LOG)"
    fi
fi
