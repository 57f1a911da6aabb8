# Sourced by the benchmark scripts: sets PY (an array: the command of a python with PyTorch 2.11)
# or exits. The libtorch venv's python, or (the venv was moved after creation) the system python3
# pointed at the venv's site-packages; $PYTHON overrides both. $1: the calling script's name.
VENV="${MSDIFF_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/msdiff}/torch-2.11.0-cu130"
if [ -z "${PYTHON:-}" ]; then
  if "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    PY=("$VENV/bin/python")
  else
    SITE="$(echo "$VENV"/lib/python3*/site-packages)"
    PY=(env "PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}" python3)
  fi
else
  PY=("$PYTHON")
fi
"${PY[@]}" -c 'import torch; assert torch.__version__.startswith("2.11"), torch.__version__' 2>/dev/null \
  || { echo "$1: no python with torch 2.11 (set PYTHON)" >&2; exit 2; }
