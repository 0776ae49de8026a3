#!/usr/bin/env bash
# Reproduces the shipped demo fusion policy (charattr_hf/assets/demo-fusion): a learned fusion of the demo CLIP
# and the tag parser, trained on their real outputs for synthetic characters of all six styles (the five of the
# default mix and "lit", coloured light that fools the CLIP about colours).
#
#   bash recipes/train_demo_fusion.sh [work_dir] [output_dir]     (relative paths: from the repository root)
#
# Data: the benchmark's validation index range of seed 0 (never seen by the demo CLIP, disjoint from every test
# split), 6000 images, tag noise "mixed". Deterministic: same seed, same data, same policy.
set -euo pipefail
cd "$(dirname "$0")/.."  # the repository root: the recipes run from there, and relative paths start there
WORK=${1:-runs/demo-fusion}
OUT=${2:-charattr_hf/assets/demo-fusion}
export HF_HUB_OFFLINE=1

python - "$WORK/benchmark" <<'PY'
import sys
from charattr_hf import synthetic as S
S.build_benchmark(seed=0, n_train=0, n_validation=6000, n_test=0, n_test_per_style=0, styles=S.ALL_STYLES,
                  num_proc=2).save_to_disk(sys.argv[1])
PY
accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
    recipes/annotate.py --dataset "$WORK/benchmark" --split validation --output_dir "$WORK/annotated" --quiet
accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
    recipes/train_fusion.py --dataset "$WORK/annotated" --dataset_split validation --schema synthetic \
    --output_dir "$OUT" --seed 0 --policy_version demo-v1

cat >> "$OUT/README.md" <<'MD'

## This policy

The demo policy shipped with charattr-hf (`--fusion demo`): it fuses the shipped demo CLIP and the tag parser
for the `synthetic` schema, and knows nothing of real images or other models. Reproduce it with
`bash recipes/train_demo_fusion.sh` (about 35 s on a 2-core CPU). For real data, annotate a labelled sample with
your sources (`recipes/annotate.py`) and train your own policy with `recipes/train_fusion.py`.
MD
