#!/usr/bin/env bash
# One GPU-machine call: cell-classifier LOSO (GBT feature ablation on CPU workers, the model
# registry on the GPU), then the shipped model trained with the chosen recipe. Everything
# comes back as $OUT/runs.tgz (+ the checkpoint and its card), even when time runs short.
#   carry: .gpu_data/cells_carry (python -m research.cells.pack ...)
set -u
export PYTHONPATH=$PWD/src:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
T=.gpu_data/cells_carry
R=/tmp/runs; mkdir -p $R
GROUP=${GROUP:-norm_ring_ctx}
END=$((SECONDS + ${LIMIT:-540}))
# Seconds left, at least 1: `timeout 0` would mean no limit at all.
left() { local l=$((END - SECONDS)); echo $((l > 1 ? l : 1)); }
pack() { (cd $R && tar czf $OUT/runs.tgz *); }
trap pack EXIT
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
# Feature / augmentation ablation with gradient-boosted trees (CPU workers, in the background).
( timeout $(left) python3 -m research.cells.loso gbt --tables $T --groups v1 norm norm_ring norm_ring_ctx all \
      --aug 0 --jobs 4 --out $R/gbt_aug0.json > $R/gbt0.log 2>&1
  timeout $(left) python3 -m research.cells.loso gbt --tables $T --groups v1 $GROUP --aug 1 --jobs 4 \
      --out $R/gbt_aug1.json > $R/gbt1.log 2>&1 ) &
GBT=$!
B=${BUDGET:-25}
timeout $(left) python3 -m research.cells.loso nn --tables $T --groups $GROUP --aug 1 --archs uam uam-l uam-m \
    --seeds 0 1 2 --within wsss4luad --jobs 12 --device cuda --budget $B --out $R/nn_uam.json > $R/nn_uam.log 2>&1
timeout $(left) python3 -m research.cells.loso nn --tables $T --groups $GROUP --aug 1 \
    --archs trans trans-moe mamba mamba-moe jamba --seeds 0 --jobs 12 --device cuda --budget $B \
    --out $R/nn_base.json > $R/nn_base.log 2>&1
python3 -c "
import json, os
recs = []
for f in ('$R/nn_uam.json', '$R/nn_base.json'):
    if os.path.exists(f): recs += json.load(open(f))
json.dump(recs, open('$R/nn.json', 'w'))"
timeout $(left) python3 -m research.cells.train_shipped --tables $T --group $GROUP --arch auto --aug 1 \
    --loso $R/nn.json --device cuda --budget ${SHIP_BUDGET:-90} --out $OUT/uam_default.pt > $R/train_shipped.log 2>&1
timeout $(left) bash -c "wait $GBT" 2>/dev/null || kill $GBT 2>/dev/null
for f in $R/*.log; do tail -n 2 "$f"; done
