#!/usr/bin/env bash
# The size of a fresh install, as a new user makes it, for both PyTorch builds (README, "Installing").
#
#   bash benchmarks/install_size.sh                 # PyTorch's CPU index for the CPU path
#   CPU_TORCH="torch==2.13.0 torchvision==0.28.0" bash benchmarks/install_size.sh   # other CPU wheels
#
# Three fresh virtual environments under $WORK (default: a temporary folder), each from a copy of this checkout's
# committed files:
#   default  pip install -e .                                      (PyPI's torch: a CUDA build on x86_64 Linux)
#   cpu-old  the CPU torch alone first, then what pip install -e . would add (--dry-run): the old README's path
#   cpu      the CPU torch and torchvision together first ($CPU_TORCH), then pip install -e .
# For each: du -sh of the environment and its largest parts, the torch build, the number of NVIDIA packages.
set -euo pipefail
PY=${PYTHON:-python3}
CPU_TORCH=${CPU_TORCH:-"torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu"}
WORK=${WORK:-$(mktemp -d)}
SRC="$WORK/src"
rm -rf "$SRC" "$WORK/default" "$WORK/cpu-old" "$WORK/cpu"
mkdir -p "$SRC"
git -C "$(dirname "$0")/.." archive HEAD | tar -x -C "$SRC"

pip_() {  # pip, without the notes of a machine whose pip configuration names folders it lacks
  { "$@" 2>&1 1>&3 | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2; } 3>&1
}

report() {  # $1: the environment
  local site="$1/lib/python$("$1/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')/site-packages"
  du -sh "$1"
  du -shc "$site"/nvidia "$site"/triton "$site"/torch "$site"/torchvision 2>/dev/null | grep -v total || true
  "$1/bin/python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  echo "NVIDIA packages: $("$1/bin/pip" list 2>/dev/null | grep -ci nvidia || true)"
}

echo "== default: pip install -e ."
$PY -m venv "$WORK/default"
pip_ "$WORK/default/bin/pip" install -q -e "$SRC"
report "$WORK/default"

echo "== cpu-old: the CPU torch alone first, then pip install -e . --dry-run"
$PY -m venv "$WORK/cpu-old"
# shellcheck disable=SC2046
pip_ "$WORK/cpu-old/bin/pip" install -q $(echo "$CPU_TORCH" | sed -E 's/torchvision[^ ]*//')
pip_ "$WORK/cpu-old/bin/pip" install --dry-run -e "$SRC" | grep "Would install" | tr ' ' '\n' \
  | grep -iE "^(torch|torchvision|triton|nvidia)" | sed 's/^/  would install /' || true
rm -rf "$WORK/cpu-old"

echo "== cpu: $CPU_TORCH, then pip install -e ."
$PY -m venv "$WORK/cpu"
# shellcheck disable=SC2086
pip_ "$WORK/cpu/bin/pip" install -q $CPU_TORCH
pip_ "$WORK/cpu/bin/pip" install -q -e "$SRC"
report "$WORK/cpu"
echo "(environments left in $WORK)"
