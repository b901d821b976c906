#!/usr/bin/env bash
# Resolves every Python dependency, direct and transitive, to exact versions with their hashes:
#   requirements.lock       what the service needs (scripts/setup.sh)
#   requirements-test.lock  that and the test tools (scripts/setup.sh test), the same versions
# Both are universal (every platform and Python >= 3.11; markers pick per machine). torch is left
# out: setup.sh installs a CUDA or a CPU build of one pinned version, and what every build of it
# needs (filelock, sympy, networkx, ...) is locked here, read from the torch installed in .venv.
# Run `make lock` after changing a dependency in pyproject.toml and commit the two locks with it;
# `make lock UPGRADE=1` also moves every package to its newest release within pyproject's ranges.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/uv" ]; then
    echo "lock: run 'make setup-test' first (it installs uv, the lock tool, and torch)" >&2
    exit 1
fi
# Inputs besides pyproject.toml's dependencies: torch's own requirements and the build backend.
inputs=$("$VENV/bin/python" - <<'PY'
import importlib.metadata
import tomllib

from packaging.requirements import Requirement

for text in importlib.metadata.requires("torch") or []:
    if "extra" not in str(Requirement(text).marker or ""):
        print(text)
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["build-system"]["requires"]))
PY
)
exclude=$(mktemp)
trap 'rm -f "$exclude"' EXIT
echo torch > "$exclude"
options=(--universal --python-version 3.11 --generate-hashes --excludes "$exclude" --quiet
    --custom-compile-command "make lock")
if [ -n "${UPGRADE:-}" ]; then options+=(--upgrade); fi
export UV_CACHE_DIR=${UV_CACHE_DIR:-.uv-cache}
"$VENV/bin/uv" pip compile pyproject.toml - --extra test "${options[@]}" -o requirements-test.lock <<<"$inputs"
# The service's lock takes the test lock's versions, so the two never disagree.
"$VENV/bin/uv" pip compile pyproject.toml - -c requirements-test.lock "${options[@]}" -o requirements.lock <<<"$inputs"
echo "lock: wrote requirements.lock and requirements-test.lock"
