#!/usr/bin/env bash
# One task of launch/slurm.sbatch (srun starts one per task): gives this task its devices, then
# runs python -m lgdlm_jax.main. jax.distributed reads the process count, this process's id and the
# coordinator (the job's first node) from SLURM's environment.
#
#   gpu: one task per GPU. The task sees only its own GPU (CUDA_VISIBLE_DEVICES) and JAX uses device 0
#        of what it sees (JAX_LOCAL_DEVICE_IDS=0); left to itself JAX would pick device SLURM_LOCALID,
#        which a process that sees one GPU does not have. JAX_PLATFORMS=cuda: no GPU is an error, not
#        a silent CPU run.
#   cpu: DEVICES CPU devices per task, collectives over gloo.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/slurm_task.sh [--dry-run] cpu|gpu DEVICES PYTHON [MAIN_ARGS...]

Run by launch/slurm.sbatch through srun, once per task. DEVICES: CPU devices per task (cpu mode;
ignored for gpu). --dry-run prints the environment it sets and the command instead of running it.
USAGE
}

fail() {
  echo "launch/slurm_task.sh (task ${SLURM_PROCID:-?} on ${SLURMD_NODENAME:-$(hostname)}): $*" >&2
  exit 1
}

# The number of tasks of this step on this node: SLURM_STEP_TASKS_PER_NODE lists them per node in
# SLURM's compressed form ("8(x2),4" = 8, 8, 4) and SLURM_NODEID indexes it.
tasks_on_this_node() {
  local entry count repeat index=0 entries
  IFS=, read -ra entries <<< "${SLURM_STEP_TASKS_PER_NODE:-${SLURM_TASKS_PER_NODE:-1}}"
  for entry in "${entries[@]}"; do
    count=${entry%%(*}
    repeat=1
    [[ $entry == *'(x'* ]] && { repeat=${entry#*(x}; repeat=${repeat%)}; }
    if (( ${SLURM_NODEID:-0} < index + repeat )); then
      echo "$count"
      return
    fi
    index=$((index + repeat))
  done
  fail "SLURM_NODEID=${SLURM_NODEID:-} is not in SLURM_STEP_TASKS_PER_NODE=${SLURM_STEP_TASKS_PER_NODE:-}"
}

dry_run=false
if [[ ${1:-} == --dry-run ]]; then
  dry_run=true
  shift
fi
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  cpu|gpu) ;;
  *) usage >&2; exit 2 ;;
esac
(( $# >= 3 )) || { usage >&2; exit 2; }
mode=$1 devices=$2 python=$3
shift 3

env_vars=()
if [[ $mode == cpu ]]; then
  [[ $devices =~ ^[1-9][0-9]*$ ]] || fail "--devices must be a positive integer, got '$devices'"
  env_vars+=(JAX_PLATFORMS=cpu JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo
             "XLA_FLAGS=--xla_force_host_platform_device_count=$devices${XLA_FLAGS:+ $XLA_FLAGS}")
else
  if [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
    IFS=, read -ra gpus <<< "$CUDA_VISIBLE_DEVICES"
  elif command -v nvidia-smi > /dev/null; then
    mapfile -t gpus < <(nvidia-smi --query-gpu=index --format=csv,noheader)
  else
    fail "no GPU is visible (CUDA_VISIBLE_DEVICES is unset and nvidia-smi is missing); for CPU nodes pass --cpu"
  fi
  local_id=${SLURM_LOCALID:-0}
  if (( ${#gpus[@]} == 1 )); then
    gpu=${gpus[0]}  # SLURM bound one GPU to this task already
  else
    tasks=$(tasks_on_this_node)
    (( ${#gpus[@]} == tasks )) || fail "this node has ${#gpus[@]} GPUs (${gpus[*]:-none}) for $tasks tasks: \
submit one task per GPU (--ntasks-per-node equal to --gpus-per-node)"
    gpu=${gpus[$local_id]}
  fi
  env_vars+=(JAX_PLATFORMS=cuda "CUDA_VISIBLE_DEVICES=$gpu" JAX_LOCAL_DEVICE_IDS=0)
fi

cmd=("$python" -m lgdlm_jax.main "$@")
if $dry_run; then
  printf '%q ' env "${env_vars[@]}" "${cmd[@]}"
  printf '\n'
  exit 0
fi
exec env "${env_vars[@]}" "${cmd[@]}"
