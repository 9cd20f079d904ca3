#!/bin/bash
# The benchmark in 1 process vs 2 torchrun processes (gloo) on the crops of crops.py:
#   bash docs/benchmark/distributed/measure.sh [PACK]     (from the repository root)
# Prints each command's wall time (model load + 6 cases); cases/s = 6 / seconds.
set -e
export PYTHONPATH=$PWD:$PWD/bench
P=${1:-/tmp/radsam_crops}
[ -d "$P" ] || python3 docs/benchmark/distributed/crops.py "$P"
A="$P --model litemedsam --levels volume --strategies box --prompts box --edits 2 --seed 0 --no-plots --device cpu --fresh"
t() { local s=$(date +%s.%N); "${@:2}" >/dev/null 2>&1; echo "$1 $(echo "$(date +%s.%N) - $s" | bc) s"; }
t two_processes python3 -m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 --master_port 29617 \
    -m RadSAMLib.cli benchmark $A --out /tmp/radsam_m2
t one_process python3 -m RadSAMLib.cli benchmark $A --out /tmp/radsam_m1
t one_process_1thread env OMP_NUM_THREADS=1 python3 -m RadSAMLib.cli benchmark $A --threads 1 --out /tmp/radsam_m3
uptime
