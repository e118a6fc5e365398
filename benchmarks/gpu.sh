#!/usr/bin/env bash
# The GPU benchmark, one prepared script of at most about 8 minutes: lgdlm_jax's cluster config
# (H=1024, 24 blocks, S=4096, R=2, bfloat16, cuDNN attention) trained on one GPU, and the PyTorch
# reference on the same GPU, bfloat16 as it trains and with autocast. Prints tokens/s, MFU, peak
# memory, compile seconds and a time breakdown (attention, matmuls, hyper-connections, optimizer)
# for each; benchmarks/gpu_bench.py says how each figure is measured.
#
# Written for a machine with jax (CUDA), torch, flax, optax, orbax-checkpoint and chex installed
# and no network: the other packages come from .whl/ (benchmarks/gpu_wheels.sh downloads them
# where pip works), installed offline into a temporary directory. --cpu-smoke runs every step of
# the script on CPU with a tiny model, to check it without a GPU.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: benchmarks/gpu.sh [--batch B] [--out DIR] [--wheels DIR] [--cpu-smoke]

  --batch B     sequences per step (default 4: the reference's batch per GPU)
  --out DIR     where each side's JSON lines and log go (default: a new temporary directory)
  --wheels DIR  wheels to install first, offline (default .whl, when it holds any)
  --cpu-smoke   a tiny model on CPU, every step of the script, no GPU needed
USAGE
}

batch=4
out=""
wheels=.whl
smoke=false
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --batch) batch="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --wheels) wheels="$2"; shift 2 ;;
    --cpu-smoke) smoke=true; shift ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
[[ -n $out ]] || out=$(mktemp -d /tmp/lgdlm_gpu_bench.XXXXXX)
mkdir -p "$out"
started=$SECONDS
echo "benchmarks/gpu.sh $(date -u +%Y-%m-%dT%H:%MZ) on $(hostname), results in $out"

if compgen -G "$wheels/*.whl" > /dev/null; then
  site=$(mktemp -d /tmp/lgdlm_site.XXXXXX)
  trap 'rm -rf "$site"' EXIT
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$wheels"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  echo "installed $(find "$wheels" -name '*.whl' | wc -l) wheels from $wheels into $site"
fi
python3 - <<'VERSIONS'
from importlib import metadata
names = ('jax', 'jaxlib', 'jax-cuda13-plugin', 'jax-cuda12-plugin', 'flax', 'optax', 'orbax-checkpoint', 'chex',
         'ml_collections', 'torch', 'mmdit', 'hyper-connections', 'x-transformers')
found = {}
for name in names:
  try:
    found[name] = metadata.version(name)
  except metadata.PackageNotFoundError:
    pass
print('packages:', ', '.join(f'{k} {v}' for k, v in found.items()))
VERSIONS

if $smoke; then
  jax_platform=cpu
  config=(--config=configs/smoke.py --config.model.hidden_size=32 --config.model.n_blocks=1 --config.model.cond_dim=32
          --config.model.max_seq_len=12 --config.model.vocab_size=97 --config.tokenizer.vocab_size=97
          --config.tokenizer.mask_token_id=3 --config.model.latent_dim=8 --config.model.dtype=bfloat16
          --config.training.train_batch_size=2 --config.loss.cycle_latent_weight=1.0)
  # Where the attention backends exist, exercise the key; on CPU only XLA's is there.
  if python3 -c "import sys; from lgdlm_jax import config; sys.exit('attention' not in config.default_config().model)"; then
    config+=(--config.model.attention=xla)
  fi
  timing=(--steps=2 --warmup=1 --iters=2)
  limits=(600 300 300)
else
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
  jax_platform=cuda  # no GPU for JAX is an error, not a silent CPU run
  config=(--config=configs/cluster.py --config.mesh.fsdp=1 "--config.training.train_batch_size=$batch"
          --config.model.attention=cudnn)
  timing=(--steps=8 --warmup=2 --iters=3)
  limits=(260 95 65)  # seconds per side (each plus 10 to be killed): the whole script stays inside 8 minutes
fi

# run_side NAME LIMIT ARGS...: one side in its own process; a side that fails or runs out of time
# keeps what it printed, and the others still run.
failed=()
run_side() {
  local name=$1 limit=$2 status=0
  shift 2
  echo "== $name (at most $limit s)"
  timeout --kill-after=10 "$limit" python3 -m benchmarks.gpu_bench "$@" "${config[@]}" "${timing[@]}" \
    > "$out/$name.jsonl" 2> "$out/$name.log" || status=$?
  if (( status != 0 )); then
    failed+=("$name")
    echo "$name: exit $status$( (( status == 124 )) && echo ' (time limit)'); last lines of $out/$name.log:"
    tail -n 5 "$out/$name.log"
  fi
}
# JAX may take most of the GPU's memory for its own pool (peak memory is read from its allocator).
JAX_PLATFORMS=$jax_platform XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 run_side jax "${limits[0]}" --side=jax
JAX_PLATFORMS=cpu run_side torch_bfloat16 "${limits[1]}" --side=torch --torch_precision=bfloat16
JAX_PLATFORMS=cpu run_side torch_autocast "${limits[2]}" --side=torch --torch_precision=autocast

results=()
for name in jax torch_bfloat16 torch_autocast; do
  grep -q '"record": "step"' "$out/$name.jsonl" && results+=("$out/$name.jsonl")
done
echo "== results ($((SECONDS - started)) s in all)"
if (( ${#results[@]} )); then
  (IFS=,; python3 -m benchmarks.gpu_bench --side=compare "--results=${results[*]}")
fi
if (( ${#failed[@]} )); then
  echo "failed or cut short: ${failed[*]} (logs in $out)"
  exit 1
fi
