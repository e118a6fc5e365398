#!/usr/bin/env bash
# Runs lgdlm_jax on every worker of a Cloud TPU VM slice: optionally creates the TPU (directly or
# as a queued resource), copies this checkout, sets up the Python environment once per worker,
# starts python -m lgdlm_jax.main on all workers (jax.distributed detects the pod by itself), and
# copies worker 0's logs back. Re-running it resumes from the newest checkpoint in the workdir.
# Every worker writes its shards of each checkpoint, so --workdir must be one filesystem that all
# workers share and that outlives the VM: a bucket mounted with gcsfuse, or NFS/Filestore.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/tpu_pod.sh --tpu NAME --zone ZONE [--project P] [--create] [--queued]
                         [--accelerator TYPE] [--version IMAGE] [--spot] --workdir DIR
                         [--dry-run] [-- MAIN_ARGS...]

  --tpu NAME           TPU VM (or queued resource) name
  --zone ZONE          e.g. us-central2-b
  --project P          Google Cloud project (default: gcloud's configured project)
  --create             create the TPU VM first (with --queued: as a queued resource)
  --accelerator TYPE   for --create, e.g. v5litepod-8 (default v4-8)
  --version IMAGE      for --create, the TPU software image (default tpu-ubuntu2204-base)
  --spot               for --create, preemptible capacity
  --workdir DIR        the run's workdir: a path all workers share (gcsfuse bucket, NFS)
  --dry-run            print the gcloud commands instead of running them
  MAIN_ARGS            passed to python -m lgdlm_jax.main (e.g. --config configs/cluster.py)

Example:
  launch/tpu_pod.sh --tpu lgdlm-v5e --zone us-west4-a --create --accelerator v5litepod-8 \
      --workdir /mnt/bucket/runs/cluster -- --config configs/cluster.py
USAGE
}

tpu=""
zone=""
project=""
create=false
queued=false
spot=false
accelerator="v4-8"
version="tpu-ubuntu2204-base"
workdir=""
dry_run=false
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --tpu) tpu="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --create) create=true; shift ;;
    --queued) queued=true; shift ;;
    --spot) spot=true; shift ;;
    --accelerator) accelerator="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --dry-run) dry_run=true; shift ;;
    --) shift; break ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
for required in tpu zone workdir; do
  if [[ -z "${!required}" ]]; then
    echo "--$required is required" >&2
    exit 2
  fi
done

common=(--zone "$zone")
[[ -n "$project" ]] && common+=(--project "$project")
remote_dir="lgdlm_jax_checkout"

run() {
  if $dry_run; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

if $create; then
  extra=()
  $spot && extra+=(--spot)
  if $queued; then
    run gcloud compute tpus queued-resources create "$tpu" --node-id "$tpu" "${common[@]}" \
      --accelerator-type "$accelerator" --runtime-version "$version" "${extra[@]}"
    echo "Waiting for queued resource $tpu to become ACTIVE" >&2
    if ! $dry_run; then
      until gcloud compute tpus queued-resources describe "$tpu" "${common[@]}" \
          --format='value(state.state)' | grep -q ACTIVE; do
        sleep 30
      done
    fi
  else
    run gcloud compute tpus tpu-vm create "$tpu" "${common[@]}" --accelerator-type "$accelerator" \
      --version "$version" "${extra[@]}"
  fi
fi

ssh_all() {
  run gcloud compute tpus tpu-vm ssh "$tpu" "${common[@]}" --worker=all --command "$1"
}

# Copy the checkout (code, configs, the package description) to every worker.
run gcloud compute tpus tpu-vm scp --recurse "$(pwd)/lgdlm_jax" "$(pwd)/configs" "$(pwd)/pyproject.toml" "$(pwd)/README.md" \
  "$tpu:~/$remote_dir/" "${common[@]}" --worker=all

# Set up the environment once per worker; the marker makes re-runs skip it.
ssh_all "cd ~/$remote_dir && if [ ! -f .env_ready ]; then python3 -m venv ~/lgdlm_venv && \
~/lgdlm_venv/bin/pip install -q -e '.[tpu]' && touch .env_ready; fi"

printf -v main_args '%q ' "$@"
ssh_all "cd ~/$remote_dir && ~/lgdlm_venv/bin/python3 -m lgdlm_jax.main --workdir $(printf '%q' "$workdir") \
$main_args 2>&1 | tee -a ~/lgdlm_run.log"

# Worker 0 writes the logs; bring its console log home.
$dry_run || mkdir -p tpu_logs
run gcloud compute tpus tpu-vm scp "$tpu:~/lgdlm_run.log" "tpu_logs/$tpu.log" "${common[@]}" --worker=0
