#!/usr/bin/env bash
# Set up .venv with rast-gguf and its pinned llama-cpp-python (compiled from source by pip, about
# 6 minutes on 2 cores; a wheel kept in .wheels/ is used when present). CPU build with llama.cpp's
# RPC backend (for --rpc and rast rpc-server) by default; for CUDA or Metal export CMAKE_ARGS first
# (see README): -DGGML_RPC=on is added to them.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
LLAMA_CPP_PYTHON="llama-cpp-python==0.3.36"
export CMAKE_ARGS="-DGGML_RPC=on ${CMAKE_ARGS:-}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
FIND=()
[ -d .wheels ] && FIND=(--find-links .wheels)
has_rpc() { .venv/bin/python -c "import sys, llama_cpp; sys.exit(0 if llama_cpp.llama_supports_rpc() else 1)" 2>/dev/null; }
"${PIP[@]}" --upgrade pip
"${PIP[@]}" "${FIND[@]}" "$LLAMA_CPP_PYTHON" "scikit-build-core>=0.10" "nanobind==3.1.0"
case " $CMAKE_ARGS " in *" -DGGML_RPC=off "*|*" -DGGML_RPC=OFF "*) has_rpc() { true; } ;; esac  # opted out
if ! has_rpc; then
  # a wheel from pip's cache or .wheels/ built without the RPC backend: build one that has it
  echo "setup.sh: the installed llama-cpp-python has no RPC backend (a wheel built without -DGGML_RPC=on, from" \
       "pip's cache or .wheels/); rebuilding it from source with CMAKE_ARGS=\"$CMAKE_ARGS\"" >&2
  "${PIP[@]}" --force-reinstall --no-deps --no-cache-dir --no-binary llama-cpp-python "$LLAMA_CPP_PYTHON"
  has_rpc || { echo "setup.sh: llama-cpp-python still has no RPC backend; check CMAKE_ARGS" >&2; exit 1; }
fi
"${PIP[@]}" "${FIND[@]}" --no-build-isolation -e ".[test]"
