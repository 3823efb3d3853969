#!/usr/bin/env bash
# The shipped weights' GPU recipe: CDRNet and the two-view baseline (both ResNet-18, 256x256
# crops) trained side by side on one GPU for the same wall-clock budget, from the synthetic
# train split's crop cache, warm-started from the previous shipped (CPU-trained) weights.
#
# Before (on any machine with the rendered set; see README "Training"):
#   python -m training crop-cache --data data/synth_train --out data/synth_train_crops --size 224
#   python -m training crop-cache --data data/synth_val --out data/synth_val_crops --size 224 \
#       --max-samples 96
# Then, on the GPU machine, from the repository root:
#   MINUTES=7.4 OUT=outputs/gpu bash training/recipes/train_shipped_gpu.sh [CACHE.tgz ...]
# (tarballs of data/synth_*_crops, unpacked into data/ first, if given). It writes the two run
# folders under runs/, the logs, and slim fp16 copies of both final checkpoints (training format,
# no optimizer state) to $OUT, split in 15 MB parts; join them with `cat NAME.part-* > NAME`.
# Then export and evaluate as in the README. EXTRA_ARGS is passed to both trainings (e.g. a
# quick check: EXTRA_ARGS="--max-steps 20 -o train.val_every=20").
set -euo pipefail
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
MINUTES=${MINUTES:-7.4}
INIT_CDRNET=${INIT_CDRNET:-stereo_pose3d/weights/cdrnet_synth.pt}
INIT_BASELINE=${INIT_BASELINE:-stereo_pose3d/weights/baseline_synth.pt}
OUT=${OUT:-outputs/gpu}
mkdir -p "$OUT" data
for archive in "$@"; do
    [ -f "$archive" ] && tar xzf "$archive" -C data
done
echo "train pairs: $(find data/synth_train_crops -name '*.npz' | wc -l)," \
     "val pairs: $(find data/synth_val_crops -name '*.npz' | wc -l)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch, torchvision, cv2; print('torch', torch.__version__, 'torchvision',
torchvision.__version__, 'cv2', cv2.__version__, 'cuda', torch.cuda.is_available())"

nvidia-smi dmon -s um -d 10 > "$OUT/gpu_dmon.txt" 2>&1 &
dmon=$!
$PY -m training finetune-cdr --config training/configs/synthetic_cdrnet_r18_gpu.yaml \
    --init "$INIT_CDRNET" --max-minutes "$MINUTES" --no-progress ${EXTRA_ARGS:-} \
    > "$OUT/cdrnet.log" 2>&1 &
cdr=$!
$PY -m training train-baseline --config training/configs/synthetic_baseline_r18_gpu.yaml \
    --init "$INIT_BASELINE" --max-minutes "$MINUTES" --no-progress ${EXTRA_ARGS:-} \
    > "$OUT/baseline.log" 2>&1 &
base=$!
status=0
wait $cdr || status=$?
wait $base || status=$?
kill $dmon 2>/dev/null || true
tail -n 4 "$OUT/cdrnet.log" "$OUT/baseline.log"

$PY - "$OUT" <<'EOF'
import sys
from pathlib import Path

import torch

out = Path(sys.argv[1])
for name in ("synthetic_cdrnet_r18_gpu", "synthetic_baseline_r18_gpu"):
    path = Path("runs") / name / "checkpoints" / "last.pt"
    if not path.is_file():
        print(f"{path}: missing")
        continue
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("optimizer", "scheduler", "scaler", "rng"):
        state.pop(key, None)
    state["model"] = {k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, out / f"{name}_last_fp16.pt")
    print(f"{name}: step {state['step']}, metrics {state.get('metrics')}")
EOF
tar czf "$OUT/runs_logs.tgz" runs/*/metrics.jsonl runs/*/summary.json runs/*/config.yaml runs/*/tb \
    2>/dev/null || true
for f in "$OUT"/*_fp16.pt; do
    [ -f "$f" ] && split -b 15m -d "$f" "$f.part-" && rm "$f"
done
ls -la "$OUT"
exit $status
