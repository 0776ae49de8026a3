#!/usr/bin/env bash
# One command for a machine with a CUDA GPU (finishes in < 10 minutes on one H100-class GPU with 16 cores):
# model-only ceiling, the annotate pipeline end to end with CPU decode workers, a GPU JPEG-decode loop, and how
# many CPU decode workers keep the GPU fed, for ViT-B-32 and ViT-L-14 (random weights) at batch 256 in fp16.
# Offline: random weights and synthetic JPEGs made on the spot. Writes results.json and results.md.
#
#   bash benchmarks/gpu.sh                                  # into benchmarks/results/gpu-<gpu name>
#   bash benchmarks/gpu.sh /tmp/out --images 4096          # another folder; other arguments go to gpu.py
#   python benchmarks/gpu.py --smoke --output_dir /tmp/x   # no GPU: checks the script on CPU in seconds
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu.sh needs a CUDA GPU (nvidia-smi found none); 'python benchmarks/gpu.py --smoke' checks the script on CPU" >&2
    exit 2
fi
name="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1 | tr ' /' '__')"
out="benchmarks/results/gpu-${name}"
if [[ $# -gt 0 && "$1" != -* ]]; then out="$1"; shift; fi
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/nvidia-smi.csv"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout 590 python benchmarks/gpu.py --output_dir "$out" "$@"
echo "results: $out/results.md and $out/results.json"
