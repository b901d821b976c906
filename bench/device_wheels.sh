#!/usr/bin/env bash
# Wheels for running bench/gpu.sh on a lent GPU machine that has Python 3.12 and a CUDA torch but no
# network: everything else the service, the benchmarks and tests/test_cuda.py import, downloaded here
# from PyPI at the versions installed in .venv (run the setup first; torch and what comes with it are
# left to the machine's own CUDA build).
#
#   bench/device_wheels.sh [DIR]        (DIR defaults to .whl, which git ignores through .git/info/exclude)
#
# Then, on the device (the device tool copies DIR when told to carry it):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site DIR/*.whl
#   PYTHONPATH=/tmp/site:$PWD bash bench/gpu.sh "$OUT" python3
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.whl}
mkdir -p "$dir"
grep -qx "/$dir/" .git/info/exclude 2>/dev/null || echo "/$dir/" >>.git/info/exclude

# What pyproject.toml asks for, and everything that pulls in on Linux with Python 3.12.
mapfile -t specs < <(.venv/bin/python - <<'PY'
import re
import tomllib
from importlib import metadata

from packaging.requirements import Requirement

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
skip = {"torch", "numpy", "playwright", "mypy", "ruff", "hypothesis", "triton", "sympy", "mpmath", "networkx"}
env = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "extra": ""}
todo = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
seen: dict[str, str] = {}
while todo:
    requirement = todo.pop()
    name = re.sub(r"[-_.]+", "-", requirement.name).lower()
    if name in seen or name in skip or (name.startswith(("nvidia-", "cuda-")) and name != "nvidia-ml-py"):
        continue
    if requirement.marker is not None and not requirement.marker.evaluate(env):
        continue
    seen[name] = metadata.version(name)
    todo += [Requirement(r) for r in metadata.requires(name) or []]
for name, version in sorted(seen.items()):
    print(f"{name}=={version}")
PY
)
python3 -m pip download -q --no-deps --only-binary=:all: --dest "$dir" \
  --implementation cp --python-version 3.12 --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any "${specs[@]}" 2> >(grep -v "is ignored: it is neither" >&2)
echo "${#specs[@]} packages:" "${specs[@]}"
du -sh "$dir"
