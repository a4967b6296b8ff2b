#!/usr/bin/env bash
# One GPU-machine call: the tumor-region LOSO of the chosen arms with a longer training budget
# than the first 4-arm comparison (fewer processes share the GPU, so every fold gets many more
# steps), the all-source model of each arm, and the current weights scored the same way.
# Everything comes back as $OUT/regions_run.tgz, even when time runs short.
#   carry: .gpu_data/regions (python -m research.regions.pack --out .gpu_data/regions)
#   ARMS (default "image-only,multimodal"; "image-only" with SEEDS), PHASE_S (default 450), BATCH (default 24),
#   SEEDS (e.g. "1 2": those seeds side by side, one folder each)
set -u
export PYTHONPATH=$PWD/src:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
R=/tmp/regions_run; mkdir -p $R
pack() { (cd $R && tar czf $OUT/regions_run.tgz --exclude='*.log' . ; tar czf $OUT/regions_logs.tgz $(find . -name '*.log') 2>/dev/null); }
trap pack EXIT
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
nproc
# SEEDS="1 2": one orchestration per seed, side by side, into $R/seed<N>.
if [ -z "${SEEDS:-}" ]; then
  python3 -m research.regions.loso run --data .gpu_data/regions --out $R --arms "${ARMS:-image-only,multimodal}" \
      --phase-s "${PHASE_S:-450}" --batch "${BATCH:-24}" 2>&1 | tail -n 20
else
  for s in $SEEDS; do
    python3 -m research.regions.loso run --data .gpu_data/regions --out $R/seed$s --arms "${ARMS:-image-only}" \
        --phase-s "${PHASE_S:-450}" --batch "${BATCH:-24}" --seed $s > $R/seed$s.log 2>&1 &
  done
  wait; tail -n 3 $R/seed*.log
fi
