#!/usr/bin/env bash
# A throwaway single-node SLURM cluster (Debian's slurm-wlm + munge) for the SLURM tests.
#
#   .ci/slurm-cluster.sh start DIR   # prints "export BENCH_TEST_SLURM_BIN=DIR/bin" on success
#   .ci/slurm-cluster.sh stop DIR
#
# The daemons run in a network namespace of their own (loopback plus an internal veth pair, no
# outside address); DIR/bin holds sbatch/squeue/sacct/scancel/srun/sinfo/scontrol wrappers that
# run the real tools inside it (nothing else on the machine sees the daemons). Needs root (ip netns). Any failure to start cleans up and exits
# non-zero without output on stdout, so the caller can carry on (the tests then skip).
set -u

ADDR_CTL=10.210.0.1
ADDR_NODE=10.210.1.1

# nsenter joins only the network namespace (``ip netns exec`` would also remount /sys, hiding
# the cgroup filesystems slurmd needs).
in_ns() { nsenter --net="/run/netns/$NS" "$@"; }

die() { echo "slurm-cluster: $*" >&2; stop_cluster; exit 1; }

stop_cluster() {
  for pidfile in "$DIR"/run/*.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile" 2>/dev/null) && [ -n "$pid" ] && kill "$pid" 2>/dev/null
  done
  sleep 1
  for pidfile in "$DIR"/run/*.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile" 2>/dev/null) && [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
    rm -f "$pidfile"
  done
  ip netns del "$NS" 2>/dev/null || true
}

start_cluster() {
  for tool in slurmctld slurmd munged ip nsenter; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not installed"
  done
  [ "$(id -u)" = 0 ] || die "needs root (network namespace, daemons)"
  stop_cluster
  mkdir -p "$DIR"/{run,state,spool,log,bin,munge} || die "cannot create $DIR"

  # The namespace: loopback and an internal veth pair, both ends inside, no route out.
  ip netns add "$NS" || die "cannot create network namespace $NS"
  ip -n "$NS" link set lo up
  ip -n "$NS" link add bs-ctl type veth peer name bs-node || die "cannot create veth pair"
  ip -n "$NS" addr add "$ADDR_CTL/24" dev bs-ctl
  ip -n "$NS" addr add "$ADDR_NODE/24" dev bs-node
  ip -n "$NS" link set bs-ctl up
  ip -n "$NS" link set bs-node up

  # munge with its own key and socket.
  dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
  chmod 0755 "$DIR/munge"
  chmod 0400 "$DIR/munge/munge.key"
  in_ns munged --force --key-file="$DIR/munge/munge.key" \
    --socket="$DIR/munge/munge.socket" --pid-file="$DIR/run/munged.pid" \
    --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/seed" \
    || die "munged did not start (see $DIR/log/munged.log)"

  cpus=$(nproc)
  cat > "$DIR/slurm.conf" <<EOF
ClusterName=benchci
SlurmctldHost=$(hostname -s)($ADDR_CTL)
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort=16817
SlurmdPort=16818
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
KillWait=10
MinJobAge=600
SchedulerParameters=sched_interval=1
NodeName=benchnode NodeHostname=benchnode NodeAddr=$ADDR_NODE CPUs=$cpus RealMemory=1 State=UNKNOWN
PartitionName=debug Nodes=benchnode Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF="$DIR/slurm.conf"
  in_ns slurmctld -f "$SLURM_CONF" || die "slurmctld did not start (see $DIR/log/slurmctld.log)"
  in_ns slurmd -f "$SLURM_CONF" -N benchnode || die "slurmd did not start (see $DIR/log/slurmd.log)"

  for tool in sbatch squeue sacct scancel srun sinfo scontrol; do
    printf '#!/bin/sh\nexport SLURM_CONF=%s\nexec nsenter --net=/run/netns/%s %s "$@"\n' \
      "$DIR/slurm.conf" "$NS" "$(command -v "$tool")" > "$DIR/bin/$tool"
    chmod 0755 "$DIR/bin/$tool"
  done

  for _ in $(seq 1 30); do
    state=$("$DIR/bin/sinfo" -h -o %T 2>/dev/null | head -n 1)
    case "$state" in idle*|mix*|alloc*) echo "export BENCH_TEST_SLURM_BIN=$DIR/bin"; return 0 ;; esac
    sleep 1
  done
  die "the node never became idle (state '${state:-none}'; see $DIR/log/)"
}

[ $# = 2 ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
DIR=$2
NS="bench-slurm-$(basename "$DIR")"  # one namespace per cluster folder: clusters never collide
case "$1" in
  start) start_cluster ;;
  stop) stop_cluster ;;
  *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
