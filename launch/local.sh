#!/usr/bin/env bash
# Starts N lgdlm_jax processes on this machine as one jax.distributed run (CPU devices, gloo
# collectives), e.g. to test multi-host behaviour without a cluster. Logs go to WORKDIR/logs/.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/local.sh [--dry-run] [-n N] [--devices D] [--port P] --workdir DIR [-- MAIN_ARGS...]

  -n N          processes to start (default 2)
  --devices D   CPU devices per process (default 2)
  --port P      coordinator port on 127.0.0.1 (default 12355)
  --workdir DIR the run's workdir (checkpoints, logs)
  --dry-run     print the commands instead of running them
  MAIN_ARGS     passed to python -m lgdlm_jax.main (e.g. --config configs/smoke.py)

Example:
  launch/local.sh -n 2 --workdir runs/local -- --config configs/smoke.py --config.mesh.fsdp=2
USAGE
}

num_processes=2
devices=2
port=12355
workdir=""
dry_run=false
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    -n) num_processes="$2"; shift 2 ;;
    --devices) devices="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --dry-run) dry_run=true; shift ;;
    --) shift; break ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [[ -z "$workdir" ]]; then
  echo "--workdir is required" >&2
  exit 2
fi

pids=()
for ((i = 0; i < num_processes; i++)); do
  cmd=(env "XLA_FLAGS=--xla_force_host_platform_device_count=${devices}" JAX_PLATFORMS=cpu
       python3 -m lgdlm_jax.main --workdir "$workdir" --coordinator_address "127.0.0.1:${port}"
       --num_processes "$num_processes" --process_id "$i" "$@")
  if $dry_run; then
    printf '%q ' "${cmd[@]}"
    printf '> %q 2>&1 &\n' "$workdir/logs/process$i.log"
  else
    mkdir -p "$workdir/logs"
    "${cmd[@]}" > "$workdir/logs/process$i.log" 2>&1 &
    pids+=("$!")
  fi
done
$dry_run && exit 0

# SIGTERM/SIGINT reach every process, which then save the same step and exit.
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' TERM INT
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit "$status"
