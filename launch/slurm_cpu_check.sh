#!/usr/bin/env bash
# Runs launch/slurm.sbatch for real, on a one-node SLURM cluster that it starts on this machine:
# 2 tasks x 2 CPU devices train one run, `scancel` stops the job mid-run (every task must save the
# same step), and the resubmitted job must resume from that step and finish.
#
# Needs Linux and root: it installs Debian's SLURM and munge with apt-get when they are missing,
# and runs munged, slurmctld and slurmd (and the job) in private network and process namespaces
# (unshare), so the daemons listen on that namespace's loopback only and none of them outlives
# the script. Their state and logs live in a temporary directory; the logs are copied to
# WORKDIR/slurm_logs. Prints one JSON line of timings and the steps on success; exits non-zero
# with the reason otherwise.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/slurm_cpu_check.sh [--workdir DIR] [--cancel-after N] [--timeout S] [--install-only]
                                 [-- MAIN_ARGS...]

  --workdir DIR     where the run, the job outputs and the SLURM logs go (default: a new temporary
                    directory, removed at the end)
  --cancel-after N  scancel the first job once N steps are logged (default 2)
  --timeout S       seconds each job may take (default 600)
  --install-only    install SLURM and munge (apt-get) if missing, then exit
  MAIN_ARGS         passed to python -m lgdlm_jax.main (default: --config configs/smoke.py); the
                    script adds the mesh (fsdp 2 over the 4 devices), log_every=1, save_every=0 and
                    the number of steps

Example (what tests/slurm_test.py runs, with a tiny model):
  launch/slurm_cpu_check.sh --workdir /tmp/slurm_check -- --config configs/smoke.py \
      --config.model.n_blocks=1
USAGE
}

PACKAGES=(slurmctld slurmd slurm-client munge iproute2)

log() { echo "[slurm_cpu_check $(date +%T)] $*" >&2; }
die() { log "FAILED: $*"; exit 1; }

install_slurm() {
  local tool missing=false
  for tool in slurmctld slurmd sbatch munged ip unshare; do
    command -v "$tool" > /dev/null || missing=true
  done
  $missing || return 0
  (( EUID == 0 )) || die "SLURM is not installed and installing it needs root: apt-get install ${PACKAGES[*]}"
  command -v apt-get > /dev/null || die "SLURM is not installed and there is no apt-get to install it"
  # Keep the packages' install scripts from starting munge or SLURM as system services.
  local policy=/usr/sbin/policy-rc.d added_policy=false
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    added_policy=true
  fi
  log "installing ${PACKAGES[*]} with apt-get"
  local status=0
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" ||
    { apt-get update -q && apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"; }; } > /dev/null || status=$?
  if $added_policy; then rm -f "$policy"; fi
  (( status == 0 )) || die "apt-get install ${PACKAGES[*]} failed (exit $status)"
}

workdir=""
cancel_after=2
timeout=600
install_only=false
in_namespace=false
install_seconds=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --cancel-after) cancel_after="$2"; shift 2 ;;
    --timeout) timeout="$2"; shift 2 ;;
    --install-only) install_only=true; shift ;;
    # Internal: set when the script re-runs itself inside the namespaces.
    --in-namespace) in_namespace=true; install_seconds="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
main_args=("$@")
(( ${#main_args[@]} )) || main_args=(--config configs/smoke.py)
cd "$(dirname "$0")/.."

if ! $in_namespace; then
  started=$SECONDS
  install_slurm
  install_seconds=$((SECONDS - started))
  $install_only && exit 0
  (( EUID == 0 )) || die "starting SLURM's daemons needs root"
  if [[ -z $workdir ]]; then
    workdir=$(mktemp -d /tmp/lgdlm_slurm_check.XXXXXX)
    trap 'rm -rf "$workdir"' EXIT
  fi
  mkdir -p "$workdir"
  # The daemons and the job run in new network, process and mount namespaces: loopback only, and
  # when this script (the namespace's first process) exits, the kernel ends every process in it.
  unshare --net --pid --fork --mount-proc -- bash "$0" --in-namespace "$install_seconds" \
    --workdir "$(cd "$workdir" && pwd)" --cancel-after "$cancel_after" --timeout "$timeout" -- "${main_args[@]}"
  exit
fi

# --- Inside the namespaces from here on. ---
ip link set lo up
state=$(mktemp -d /tmp/lgdlm_slurm_state.XXXXXX)
chmod 755 "$state"  # munged wants the directories above its socket traversable by all
mkdir -p "$state/munge" "$state/ctld" "$state/spool"

stop_cluster() {
  local pidfile pid
  for pidfile in "$state/slurmd.pid" "$state/slurmctld.pid" "$state/munge/munged.pid"; do
    [[ -s $pidfile ]] || continue
    pid=$(< "$pidfile")
    kill "$pid" 2> /dev/null || continue
    for _ in $(seq 50); do kill -0 "$pid" 2> /dev/null || break; sleep 0.2; done
  done
  mkdir -p "$workdir/slurm_logs"
  cp "$state"/*.log "$state"/munge/*.log "$workdir/slurm_logs/" 2> /dev/null || true
  rm -rf "$state"
}
trap stop_cluster EXIT

started=$SECONDS
dd if=/dev/urandom of="$state/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$state/munge/munge.key"
munged --socket="$state/munge/socket" --key-file="$state/munge/munge.key" --pid-file="$state/munge/munged.pid" \
  --log-file="$state/munge/munged.log" --seed-file="$state/munge/seed"

cpus=$(nproc)
(( cpus >= 2 )) || die "2 tasks need 2 CPUs; this machine has $cpus"
export SLURM_CONF="$state/slurm.conf"
# IPv6 enabled as well: with only a loopback interface, SLURM's IPv4-only address lookups
# (AI_ADDRCONFIG) find no address at all. KillWait: seconds between scancel's SIGTERM and SIGKILL.
cat > "$SLURM_CONF" <<CONF
ClusterName=lgdlm_check
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$state/munge/socket
CommunicationParameters=EnableIPv4,EnableIPv6
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=120
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=check Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
slurmctld
slurmd -N localhost
for _ in $(seq 120); do
  [[ $(sinfo -h -n localhost -o %T 2> /dev/null) == idle ]] && break
  sleep 0.5
done
[[ $(sinfo -h -n localhost -o %T) == idle ]] || die "the SLURM node did not come up: $(sinfo 2>&1)"
cluster_seconds=$((SECONDS - started))
log "one-node SLURM cluster up in ${cluster_seconds} s"

run="$workdir/run"
metrics="$run/training_log.jsonl"
fixed_args=(--config.mesh.fsdp=2 --config.mesh.min_shard_size=1 --config.training.log_every=1
            --config.training.save_every=0)

submit() {  # submit STEPS: prints the job id
  sbatch --parsable --nodes=1 --ntasks=2 --cpus-per-task=1 --time=30 --job-name=lgdlm_check \
    --output="$workdir/slurm-%j.out" launch/slurm.sbatch --cpu --devices 2 --workdir "$run" -- \
    "${main_args[@]}" "${fixed_args[@]}" "--config.training.num_train_steps=$1"
}

job_state() { scontrol show job "$1" | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'; }

wait_until_ended() {  # wait_until_ended JOB DEADLINE
  while [[ $(job_state "$1") =~ ^(PENDING|CONFIGURING|RUNNING|COMPLETING)$ ]]; do
    (( SECONDS < $2 )) || die "job $1 still $(job_state "$1") after ${timeout} s; its output:
$(tail -n 40 "$workdir/slurm-$1.out")"
    sleep 0.5
  done
}

logged_steps() { if [[ -f $metrics ]]; then grep -c '"loss"' "$metrics" || true; else echo 0; fi; }

# Job 1: as many steps as it takes; scancel once cancel_after steps are logged.
first_submitted=$SECONDS
job1=$(submit 1000000)
log "job $job1 submitted; scancel after $cancel_after logged steps"
deadline=$((SECONDS + timeout))
while (( $(logged_steps) < cancel_after )); do
  [[ $(job_state "$job1") =~ ^(PENDING|CONFIGURING|RUNNING)$ ]] || die "job $job1 ended ($(job_state "$job1")) \
before step $cancel_after; its output:
$(tail -n 40 "$workdir/slurm-$job1.out")"
  (( SECONDS < deadline )) || die "job $job1 logged $(logged_steps) steps in ${timeout} s"
  sleep 0.5
done
first_steps_seconds=$((SECONDS - first_submitted))
scancel "$job1"
cancelled=$SECONDS
wait_until_ended "$job1" $((SECONDS + timeout))
cancel_seconds=$((SECONDS - cancelled))
output1="$workdir/slurm-$job1.out"
log "job $job1 $(job_state "$job1") $cancel_seconds s after scancel"

# Both tasks saved the same step, and it is in the workdir.
mapfile -t saved < <(grep -o 'Preempted: saved step [0-9]*' "$output1" | grep -o '[0-9]*$')
(( ${#saved[@]} == 2 )) || die "expected both tasks to log 'Preempted: saved step', found ${#saved[@]}:
$(tail -n 40 "$output1")"
[[ ${saved[0]} == "${saved[1]}" ]] || die "the tasks saved different steps: ${saved[*]}"
step=${saved[0]}
[[ -d $run/checkpoints/$step ]] || die "no checkpoint $run/checkpoints/$step after the preemption"

# Job 2: the same command resumes from that step and trains two more.
total=$((step + 2))
resubmitted=$SECONDS
job2=$(submit "$total")
log "job $job2 submitted: resume from step $step, stop at $total"
wait_until_ended "$job2" $((SECONDS + timeout))
resume_seconds=$((SECONDS - resubmitted))
output2="$workdir/slurm-$job2.out"
exit_code=$(scontrol show job "$job2" | sed -n 's/.*ExitCode=\([0-9:]*\).*/\1/p')
[[ $(job_state "$job2") == COMPLETED && $exit_code == 0:0 ]] || die "job $job2 $(job_state "$job2") \
(exit $exit_code); its output:
$(tail -n 40 "$output2")"
# Resumed, not restarted: the run's log holds every step 1..total exactly once.
logged=$(grep '"loss"' "$metrics" | sed -n 's/^{"step": \([0-9]*\).*/\1/p' | tr '\n' ' ')
[[ $logged == "$(seq -s ' ' 1 "$total") " ]] || die "the run's log should hold steps 1..$total once each \
(job $job2 resuming from step $step), it holds: $logged"

printf '{"preempted_step": %d, "final_step": %d, "install_s": %d, "cluster_start_s": %d, "job1_to_step_%d_s": %d, "scancel_to_end_s": %d, "resumed_job_s": %d, "jobs": [%d, %d]}\n' \
  "$step" "$total" "$install_seconds" "$cluster_seconds" "$cancel_after" "$first_steps_seconds" "$cancel_seconds" \
  "$resume_seconds" "$job1" "$job2"
