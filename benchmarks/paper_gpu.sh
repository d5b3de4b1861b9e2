#!/usr/bin/env bash
# Issue #8's paper-scale figures in one shot, on one GPU (README "Benchmarks"):
#   bash benchmarks/paper_gpu.sh infer|train|all [OUT_DIR]      # on the GPU machine, from the repo root
# Each step has its own time limit so `infer` and `train` each end inside a 10-minute call.
# A GPU image without xr0's pins (the lent H200 image has transformers 5.17, no omegaconf/webdataset) takes
# wheels from .whl/ (ignored by git); fetch them where pip reaches a registry with:
#   bash benchmarks/paper_gpu.sh wheels
set -uo pipefail
what=${1:-all}
out=${2:-${OUT:-runs/bench}}
if [ "$what" = wheels ]; then
  exec python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
    transformers==5.24.0 omegaconf==2.4.0 webdataset==1.0.2 braceexpand==0.1.7
fi
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:src || exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"
step() {  # step NAME SECONDS COMMAND...: run, keep its log, go on when it fails
  local name=$1 limit=$2; shift 2
  echo "== $name"; timeout "$limit" "$@" 2>&1 | tee "$out/$name.log" | tail -n 3
}
if [ "$what" = infer ] || [ "$what" = all ]; then
  step gpu_tests 120 python3 -m pytest -q -p no:cacheprovider tests/test_infer.py tests/backbones/test_qwen3vl_static.py tests/backbones/test_paligemma.py -k "not stages"
  step infer_paper 300 python3 -m xr0.cli bench infer --scale paper --out "$out/infer_paper.json"
  step infer_paper_paligemma 240 python3 -m xr0.cli bench infer --scale paper --backbone paligemma \
    --out "$out/infer_paper_paligemma.json"
  step infer_paper_compile 240 python3 -m xr0.cli bench infer --scale paper --no-eager --compile --out "$out/infer_paper_compile.json"
fi
if [ "$what" = train ] || [ "$what" = all ]; then
  step train_stage2 240 python3 -m xr0.cli bench train --scale paper --stage dit_flow --batch auto --out "$out/train_stage2.json"
  step train_stage3 300 python3 -m xr0.cli bench train --scale paper --stage post_train --batch auto --activation-checkpointing --out "$out/train_stage3.json"
fi
