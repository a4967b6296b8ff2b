#!/usr/bin/env bash
# Second GPU call: the LOSO rows the first call ran out of time for (GBT v1 + augmentation,
# GBT all on GlaS, baseline seeds 1-2, the networks on v1 columns) and a v1-column candidate.
set -u
export PYTHONPATH=$PWD/src:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
T=.gpu_data/cells_carry
R=/tmp/runs; mkdir -p $R
END=$((SECONDS + ${LIMIT:-360}))
left() { local l=$((END - SECONDS)); echo $((l > 1 ? l : 1)); }
pack() { (cd $R && tar czf $OUT/runs_fill.tgz *); }
trap pack EXIT
( timeout $(left) python3 -m research.cells.loso gbt --tables $T --groups v1 --aug 1 --jobs 3 --out $R/gbt_v1_aug1.json > $R/gbt_fill.log 2>&1
  timeout $(left) python3 -m research.cells.loso gbt --tables $T --groups all --aug 0 --held glas --jobs 1 --out $R/gbt_all_glas.json >> $R/gbt_fill.log 2>&1 ) &
GBT=$!
timeout $(left) python3 -m research.cells.loso nn --tables $T --groups v1 --aug 1 --archs mamba-moe uam-l --seeds 0 \
    --jobs 12 --device cuda --budget 25 --out $R/nn_v1.json > $R/nn_v1.log 2>&1
timeout $(left) python3 -m research.cells.loso nn --tables $T --groups norm_ring_ctx --aug 1 \
    --archs trans trans-moe mamba mamba-moe jamba --seeds 1 2 --jobs 12 --device cuda --budget 25 \
    --out $R/nn_base_s12.json > $R/nn_base_s12.log 2>&1
timeout $(left) bash -c "wait $GBT" 2>/dev/null || kill $GBT 2>/dev/null
for f in $R/*.log; do tail -n 2 "$f"; done
