#!/usr/bin/env bash
# Ahead-of-time compiles of configs/cluster.py's train step for the accelerators it is meant for, one
# at a time (each takes 1-6 minutes and a few GB of RAM on a 2-core machine); one JSON line each.
#
#   benchmarks/aot_cluster.sh TPU_PYTHON CUDA_PYTHON > aot.jsonl
#
# TPU_PYTHON / CUDA_PYTHON: the python of an environment with the tpu / cuda extra installed
# (e.g. python3 -m venv --system-site-packages ENV, then ENV/bin/pip install -e '.[tpu]');
# pass - to skip that half.
set -euo pipefail
cd "$(dirname "$0")/.."
tpu_python=${1:?usage: benchmarks/aot_cluster.sh TPU_PYTHON CUDA_PYTHON}
cuda_python=${2:?usage: benchmarks/aot_cluster.sh TPU_PYTHON CUDA_PYTHON}
export JAX_PLATFORMS=cpu TPU_SKIP_MDS_QUERY=1

compile() {  # PYTHON TOPOLOGY [--config.KEY=VALUE ...]; config=FILE.py[:ARG] before it for another config
  local python=$1 topology=$2
  shift 2
  "$python" -m lgdlm_jax.bench --compile_only --topology "$topology" --config "${config:-configs/cluster.py}" "$@" \
    2>/dev/null
}

if [[ $tpu_python != - ]]; then
  # As shipped (remat dots, batch 8), padded and packed rows; the estimate's non-padding tokens/s on
  # OpenWebText-like sentences (benchmarks/packing.py's lengths, 8 rows of 4096): padded rows hold
  # 99.17% padding, packed rows (K = 256) 0.1%.
  compile "$tpu_python" v5e:2x4 --padding_fraction 0.9917
  config=configs/cluster.py:packed compile "$tpu_python" v5e:2x4 --padding_fraction 0.001
  compile "$tpu_python" v5e:2x4 --config.training.round_gradients=joint           # all passes in one backward pass
  compile "$tpu_python" v5e:2x4 --config.training.train_batch_size=16             # 2 sequences per chip
  compile "$tpu_python" v5e:2x4 --config.training.train_batch_size=24             # 3 per chip
  compile "$tpu_python" v5e:2x4 --config.model.remat_policy=full --config.training.train_batch_size=32
  compile "$tpu_python" v5e:2x4 --config.model.remat_policy=full --config.training.train_batch_size=48
  compile "$tpu_python" v5e:2x4 --config.model.max_seq_len=8192                   # S = 8192, one sequence per chip
  compile "$tpu_python" v5p:2x2x1 --config.mesh.fsdp=4 --config.training.train_batch_size=64
  compile "$tpu_python" v5p:2x2x1 --config.mesh.fsdp=4 --config.training.train_batch_size=96
fi
if [[ $cuda_python != - ]]; then
  compile "$cuda_python" h100:8 --config.training.train_batch_size=32             # the reference's 4 per GPU
fi
