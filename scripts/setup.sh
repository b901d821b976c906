#!/usr/bin/env bash
# Sets up everything zimage-sse needs in this checkout: a virtual environment in .venv with every
# Python package at the version requirements.lock (or, for `setup.sh test`, requirements-test.lock)
# pins, torch (a CUDA build where an NVIDIA GPU answers, a CPU build elsewhere), the package itself,
# and htmx 4 with its SSE extension from the npm registry into node_modules/ (git-ignored, served
# under /static/vendor; with `test`, axe-core too) as package-lock.json pins it. Safe to run again: it
# only installs what is missing or out of date.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=${1:-}

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# Every Python package at the exact version and hash in the lock (scripts/lock.sh writes it), first,
# so that torch finds what it needs already there and the project adds nothing of its own.
LOCK=requirements.lock
if [[ "$EXTRAS" == *test* ]]; then LOCK=requirements-test.lock; fi
echo "setup: installing the Python packages in $LOCK"
"${PIP[@]}" install -q --require-hashes --no-deps -r "$LOCK"

# torch is the one package the lock leaves out: one version, in the build this machine can use.
TORCH_VERSION=2.13.0
if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "setup: NVIDIA GPU found, installing the CUDA build of torch $TORCH_VERSION"
        "${PIP[@]}" install ${ZIMAGE_SSE_TORCH_SPEC:-"torch==$TORCH_VERSION"}
    else
        # No GPU: a CPU build. ZIMAGE_SSE_TORCH_INDEX can name a CPU-wheel index; without it pip
        # takes torch from wherever it is configured to look (a CPU wheel on our machines).
        echo "setup: no GPU, installing a CPU build of torch $TORCH_VERSION"
        if [ -n "${ZIMAGE_SSE_TORCH_INDEX:-}" ]; then
            "${PIP[@]}" install --index-url "$ZIMAGE_SSE_TORCH_INDEX" ${ZIMAGE_SSE_TORCH_SPEC:-"torch==$TORCH_VERSION"}
        else
            "${PIP[@]}" install ${ZIMAGE_SSE_TORCH_SPEC:-"torch==$TORCH_VERSION"}
        fi
    fi
fi

echo "setup: installing zimage-sse${EXTRAS:+ [$EXTRAS]}"
# No dependencies and no build environment of its own: everything, setuptools too, is in the lock.
"${PIP[@]}" install -q --no-deps --no-build-isolation -e ".${EXTRAS:+[$EXTRAS]}"
"${PIP[@]}" check

# The tests also need axe-core (a development dependency in package.json); serving needs only htmx.
if [[ "$EXTRAS" == *test* ]]; then
    NPM_OMIT=(); NPM_NEEDS=node_modules/axe-core/axe.min.js; NPM_WHAT="htmx and axe-core"
else
    NPM_OMIT=(--omit=dev); NPM_NEEDS=node_modules/htmx.org/dist/ext/hx-sse.js; NPM_WHAT="htmx"
fi
if [ ! -f node_modules/htmx.org/dist/ext/hx-sse.js ] || [ ! -f "$NPM_NEEDS" ] \
    || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    echo "setup: installing $NPM_WHAT from the npm registry"
    npm ci --no-audit --no-fund --silent "${NPM_OMIT[@]}"
fi
# Debian packages the tests need: installed with apt-get as root, else named for whoever can.
apt_install() {  # PACKAGE WHAT-FOR WHAT-IS-MISSING
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing $1 for $2"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
    else
        echo "setup: $2 need $3 (Debian: sudo apt-get install $1)" >&2
    fi
}
# The browser tests drive Debian's Chromium with Playwright (Playwright cannot download browsers here).
if [[ "$EXTRAS" == *test* ]] && [ ! -x /usr/bin/chromium ]; then
    apt_install chromium "the browser tests" "Chromium at /usr/bin/chromium"
fi
# The PostgreSQL store's tests start a real server of Debian's (tests/postgres.py); only its programs
# are needed: the tests make a throwaway cluster of their own.
if [[ "$EXTRAS" == *test* ]] && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    apt_install postgresql "the store tests" "PostgreSQL's programs"
fi
# The event bus's tests start a real Redis of Debian's (tests/redis_server.py) the same way.
if [[ "$EXTRAS" == *test* ]] && [ ! -x /usr/bin/redis-server ]; then
    apt_install redis-server "the event bus tests" "Redis at /usr/bin/redis-server"
fi
echo "setup: done"
