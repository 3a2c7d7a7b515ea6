#!/usr/bin/env bash
# Set up .venv with rast-gguf and its pinned llama-cpp-python (compiled from source by pip, about
# 6 minutes on 2 cores; a wheel kept in .wheels/ is used when present). CPU build by default; for
# CUDA or Metal export CMAKE_ARGS first (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
FIND=()
[ -d .wheels ] && FIND=(--find-links .wheels)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" "${FIND[@]}" "llama-cpp-python==0.3.36" "scikit-build-core>=0.10" "nanobind==3.1.0"
"${PIP[@]}" "${FIND[@]}" --no-build-isolation -e ".[test]"
