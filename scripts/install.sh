#!/usr/bin/env bash
# Install leakcheck into ./.venv (created if missing); with --test, also its test tools.
#
# torch: an existing torch in .venv is kept, whatever its build. Where there is none, this
# installs $LEAKCHECK_TORCH (default torch==2.13.0, the CPU build on our dev and CI machines;
# a bare `pip install torch` pulls a multi-GB CUDA build). On a GPU machine set it yourself:
#   LEAKCHECK_TORCH="torch" scripts/install.sh
#   LEAKCHECK_TORCH="torch" LEAKCHECK_TORCH_INDEX=https://download.pytorch.org/whl/cpu scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."

python="${LEAKCHECK_PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "installing ${LEAKCHECK_TORCH:-torch==2.13.0} (no torch in .venv yet)" >&2
  "${pip[@]}" install ${LEAKCHECK_TORCH_INDEX:+--index-url "$LEAKCHECK_TORCH_INDEX"} "${LEAKCHECK_TORCH:-torch==2.13.0}"
fi

# The distribution was called `leakcheck` before it became leakcheck-gpu (`leakcheck` is another
# project on PyPI). An editable install of this checkout under the old name would leave a second
# copy of the same command and pytest plugin: remove it (only if it points here).
old_install="$(.venv/bin/python -m pip show leakcheck 2>/dev/null || true)"  # captured: grep -q would cut pip's pipe
if grep -qx "Editable project location: $(pwd)" <<<"$old_install"; then
  "${pip[@]}" uninstall -y leakcheck
fi

target="."
if [ "${1:-}" = "--test" ]; then
  target=".[test]"
fi
"${pip[@]}" install -e "$target"
