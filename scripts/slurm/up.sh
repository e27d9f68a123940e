#!/usr/bin/env bash
# Bring up a real SLURM cluster on localhost (slurmctld + slurmd + slurmdbd backed
# by MariaDB, munge authentication) for integration tests.
#
# Nodes: this host's own node (partition `debug`, the default) and N virtual
# nodes vnode1..vnodeN (partition `multinode`): each one more slurmd on this
# host, in its own UTS namespace (so its own hostname, which is how slurmd finds
# its node in slurm.conf), with its own port, spool dir, pid file and log. Jobs
# over several virtual nodes are real multi-node jobs (one allocation, srun
# starting a task per node, each task seeing its node's hostname) on one kernel
# and one file system. Every node declares GPU GRES backed by dummy device files
# (character devices like /dev/null), so `--gpus=N` / `--gres=gpu:N` jobs are
# accepted and SLURM sets CUDA_VISIBLE_DEVICES; there is no CUDA behind them.
#
# Idempotent: installs only missing packages, rewrites configs only when their
# content changes (restarting the affected daemons), starts only daemons that
# are not already running, then waits until `sinfo` shows the node idle and
# `sacct` answers. Works without systemd (containers): every daemon is started
# directly and tracked by its pid file, so scripts/slurm/down.sh can stop it.
#
# Usage (as root):  bash scripts/slurm/up.sh [--virtual-nodes N]   (default N=2; 0: this host only)
# Environment:
#   SLURM_UP_TIMEOUT   seconds to wait for each daemon / the node (default 60)
#   SLURM_EXTRA_USERS  space-separated extra users to register in accounting
set -euo pipefail

T0=$(date +%s.%N)
TIMEOUT=${SLURM_UP_TIMEOUT:-60}

VNODES=2
while (($#)); do
    case $1 in
        --virtual-nodes) VNODES=${2:-}; shift; (($#)) && shift ;;
        --virtual-nodes=*) VNODES=${1#*=}; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown option $1; usage: bash $0 [--virtual-nodes N]" >&2; exit 2 ;;
    esac
done
[[ $VNODES =~ ^[0-9]+$ ]] && ((VNODES <= 8)) ||
    { echo "error: --virtual-nodes must be a whole number from 0 to 8, got '$VNODES'" >&2; exit 2; }

CLUSTER=localcluster
PARTITION=debug
ACCOUNT=default
LOGDIR=/var/log/slurm
CONF=/etc/slurm/slurm.conf
GRESCONF=/etc/slurm/gres.conf
DBDCONF=/etc/slurm/slurmdbd.conf
DB_NAME=slurm_acct_db
DB_USER=slurm
MYSQL_RUN=/run/mysqld
MYSQL_PID=$MYSQL_RUN/mysqld.pid
MUNGE_PID=/run/munge/munged.pid
DBD_PID=/run/slurmdbd.pid
CTLD_PID=/run/slurmctld.pid
# One slurmd a node: slurm.conf's %n is the node's name.
slurmd_pid() { echo "/run/slurmd-$1.pid"; }
slurmd_log() { echo "$LOGDIR/slurmd-$1.log"; }
VNODE_PORT0=6830      # vnodeK listens on VNODE_PORT0+K (this host's slurmd: 6818)
GPUS_PER_NODE=2
GPU_DIR=/run/slurm-fake-gpus

log() { printf '[slurm-up] %s\n' "$*" >&2; }

# Print the tail of a log file (if it exists) to stderr.
show_log() {
    local f=$1
    if [[ -s $f ]]; then
        printf -- '----- last lines of %s -----\n' "$f" >&2
        tail -n 25 "$f" >&2
        printf -- '-----\n' >&2
    else
        printf -- '(log %s is missing or empty)\n' "$f" >&2
    fi
}

die() {
    local msg=$1; shift
    printf '[slurm-up] ERROR: %s\n' "$msg" >&2
    local f
    for f in "$@"; do show_log "$f"; done
    exit 1
}

# wait_for <seconds> <description> <command...>: poll until the command succeeds.
wait_for() {
    local secs=$1 what=$2; shift 2
    local deadline=$(( $(date +%s) + secs ))
    until "$@" >/dev/null 2>&1; do
        if (( $(date +%s) >= deadline )); then
            return 1
        fi
        sleep 0.2
    done
    log "$what: ok"
}

# shellcheck source=scripts/slurm/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# pid_alive <pidfile> <exe-name>: the pid file names a live process of that name.
pid_alive() {
    local pidfile=$1 name=$2 pid
    [[ -r $pidfile ]] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    [[ -n $pid ]] || return 1
    alive "$pid" || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]
}

# running <pidfile> <exe-name>: daemon is up, via its pid file or (for daemons
# started by someone else) an exact process-name match.
running() {
    pid_alive "$1" "$2" || live_by_name "$2" >/dev/null
}

# stop_daemon <pidfile> <exe-name>: used when a config change needs a restart.
stop_daemon() {
    local pidfile=$1 name=$2 pid i
    if pid_alive "$pidfile" "$name"; then
        pid=$(tr -dc '0-9' <"$pidfile")
    else
        pid=$(live_by_name "$name" || true)
    fi
    [[ -n ${pid:-} ]] || return 0
    log "restarting $name (pid $pid) to pick up a config change"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        alive "$pid" || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

[[ $(id -u) -eq 0 ]] || die "must run as root (try: sudo bash $0)"
trap 'die "command failed (line $LINENO): $BASH_COMMAND"' ERR

# ---------------------------------------------------------------- packages --
need_pkgs=()
command -v slurmctld >/dev/null 2>&1 || need_pkgs+=(slurmctld)
command -v slurmd    >/dev/null 2>&1 || need_pkgs+=(slurmd)
command -v sbatch    >/dev/null 2>&1 || need_pkgs+=(slurm-client)
command -v slurmdbd  >/dev/null 2>&1 || need_pkgs+=(slurmdbd)
command -v munged    >/dev/null 2>&1 || need_pkgs+=(munge)
command -v mariadbd  >/dev/null 2>&1 || need_pkgs+=(mariadb-server)
command -v mariadb   >/dev/null 2>&1 || need_pkgs+=(mariadb-client)
if ((${#need_pkgs[@]})); then
    log "installing: ${need_pkgs[*]}"
    # Keep the packages' maintainer scripts from starting services (they would
    # start with a missing/default config); this script starts them itself.
    made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt_log=$(mktemp)
    if ! { apt-get update -q && apt-get install -y -q --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
            "${need_pkgs[@]}"; } >"$apt_log" 2>&1; then
        ((made_policy)) && rm -f /usr/sbin/policy-rc.d
        die "apt-get install ${need_pkgs[*]} failed" "$apt_log"
    fi
    ((made_policy)) && rm -f /usr/sbin/policy-rc.d
    rm -f "$apt_log"
fi

id slurm >/dev/null 2>&1 || die "user 'slurm' missing after installing the slurm packages"
id munge >/dev/null 2>&1 || die "user 'munge' missing after installing munge"
id mysql >/dev/null 2>&1 || die "user 'mysql' missing after installing mariadb-server"

# ------------------------------------------------------------- directories --
install -d -m 755 -o slurm -g slurm "$LOGDIR" /var/spool/slurmctld /var/lib/slurm
install -d -m 755 /var/spool/slurmd /etc/slurm "$GPU_DIR"
install -d -m 700 -o munge -g munge /etc/munge /var/lib/munge /var/log/munge
install -d -m 755 -o munge -g munge /run/munge
install -d -m 755 -o mysql -g mysql "$MYSQL_RUN"

# ------------------------------------------------------------ dummy GPUs --
# Character devices with /dev/null's numbers: slurmd only needs the files to
# exist (no cgroup device constraint here); a job's CUDA_VISIBLE_DEVICES comes
# from their indices.
for ((i = 0; i < GPUS_PER_NODE; i++)); do
    [[ -c $GPU_DIR/gpu$i ]] || mknod -m 666 "$GPU_DIR/gpu$i" c 1 3
done

# ---------------------------------------------------------- virtual nodes --
# A virtual node needs a UTS namespace (CAP_SYS_ADMIN). Where there is none,
# the cluster comes up without them and says why; the multi-node tests then
# fail under CI=true (skip otherwise) with that reason.
if ((VNODES)) && ! uts_err=$(unshare --uts -- true 2>&1); then
    log "WARNING: no virtual nodes: 'unshare --uts' failed (${uts_err:-no message}); this host's node only"
    VNODES=0
fi
VNODE_NAMES=()
for ((k = 1; k <= VNODES; k++)); do VNODE_NAMES+=("vnode$k"); done
# Their hostnames resolve to this host (srun, torchrun's rendezvous and gloo
# look them up); added once, never removed.
for v in "${VNODE_NAMES[@]}"; do
    grep -Eq "^[^#]*[[:space:]]$v([[:space:]]|\$)" /etc/hosts || printf '127.0.0.1 %s\n' "$v" >>/etc/hosts
done

# ------------------------------------------------------------------- munge --
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating munge key"
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key

# ------------------------------------------------------------- slurm.conf --
# Hardware as slurmd itself sees it; RealMemory must not exceed its value.
hw=$(slurmd -C 2>/dev/null | head -n1) || true
[[ $hw == NodeName=* ]] || die "'slurmd -C' did not report the node's hardware (got: ${hw:-nothing})"
hwval() { sed -n "s/.*[[:space:]]$1=\([0-9]*\).*/\1/p" <<<"$hw"; }
NODE=$(hostname -s)
CPUS=$(hwval CPUs)
SOCKETS=$(hwval SocketsPerBoard)
CORES=$(hwval CoresPerSocket)
THREADS=$(hwval ThreadsPerCore)
MEM=$(hwval RealMemory)
[[ -n $CPUS && -n $SOCKETS && -n $CORES && -n $THREADS && -n $MEM ]] ||
    die "could not parse 'slurmd -C' output: $hw"
# Leave ~5% (at most 1 GiB) headroom below what slurmd reports.
headroom=$(( MEM / 20 )); (( headroom > 1024 )) && headroom=1024
REALMEM=$(( MEM - headroom ))
# Without DefMemPerCPU a job without --mem gets the whole node's memory and
# jobs run one at a time; give each CPU an equal share (capped at 1 GiB).
DEFMEM=$(( REALMEM / CPUS )); (( DEFMEM > 1024 )) && DEFMEM=1024

write_if_changed() {  # <dest> <mode> <owner>  (content on stdin); returns 0 if changed
    local dest=$1 mode=$2 owner=$3 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [[ -f $dest ]] && cmp -s "$tmp" "$dest"; then
        rm -f "$tmp"
        chmod "$mode" "$dest"; chown "$owner" "$dest"
        return 1
    fi
    install -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$tmp" "$dest"
    rm -f "$tmp"
    return 0
}

conf_changed=0
write_if_changed "$CONF" 644 root:root <<EOF && conf_changed=1 || true
# Written by scripts/slurm/up.sh -- single-node test cluster; edits are overwritten.
ClusterName=$CLUSTER
SlurmctldHost=localhost
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
MailProg=/bin/true
SlurmUser=slurm
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$(slurmd_pid %n)
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$(slurmd_log %n)
SlurmctldDebug=info
SlurmdDebug=info
# Containers: no cgroups, no systemd.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
# Accounting through slurmdbd so that sacct works (Slurm 22.05 has no file-based sacct).
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStorageTRES=gres/gpu
GresTypes=gpu
# Scheduling: share the node by core and memory.
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEFMEM
# Short timers for tests; finished jobs leave slurmctld fast (sacct keeps them).
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=10
InactiveLimit=0
MinJobAge=30
KillWait=5
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS Sockets=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$REALMEM Gres=gpu:$GPUS_PER_NODE State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
$(for v in "${VNODE_NAMES[@]}"; do
    echo "NodeName=$v NodeAddr=127.0.0.1 Port=$((VNODE_PORT0 + ${v#vnode})) CPUs=$CPUS Sockets=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$REALMEM Gres=gpu:$GPUS_PER_NODE State=UNKNOWN"
done
if ((VNODES)); then echo "PartitionName=multinode Nodes=$(IFS=,; echo "${VNODE_NAMES[*]}") Default=NO MaxTime=INFINITE State=UP"; fi)
EOF
write_if_changed "$GRESCONF" 644 root:root <<EOF && conf_changed=1 || true
# Written by scripts/slurm/up.sh: dummy GPUs (see the top of up.sh).
Name=gpu File=$GPU_DIR/gpu[0-$((GPUS_PER_NODE - 1))]
EOF

# ----------------------------------------------------------- slurmdbd.conf --
DB_PASS=""
if [[ -f $DBDCONF ]]; then
    DB_PASS=$(sed -n 's/^StoragePass=//p' "$DBDCONF" | head -n1)
fi
[[ -n $DB_PASS ]] || DB_PASS=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')

dbd_changed=0
write_if_changed "$DBDCONF" 600 slurm:slurm <<EOF && dbd_changed=1 || true
# Written by scripts/slurm/up.sh; must stay mode 600 owned by slurm.
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
LogFile=$LOGDIR/slurmdbd.log
PidFile=$DBD_PID
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF

# --------------------------------------------------------------- mariadb --
mysql_ok() { mariadb-admin --protocol=socket -uroot ping >/dev/null 2>&1; }
if ! mysql_ok; then
    if [[ ! -d /var/lib/mysql/mysql ]]; then
        log "initialising the MariaDB data directory"
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$LOGDIR/mariadb-install.log" 2>&1 ||
            die "mariadb-install-db failed" "$LOGDIR/mariadb-install.log"
    fi
    log "starting mariadb"
    setsid /usr/sbin/mariadbd --user=mysql --pid-file="$MYSQL_PID" \
        --log-error="$LOGDIR/mariadb.log" --skip-log-bin --innodb-lock-wait-timeout=900 --innodb-buffer-pool-size=1G \
        </dev/null >>"$LOGDIR/mariadb.log" 2>&1 &
    wait_for "$TIMEOUT" "mariadb" mysql_ok || die "mariadb did not come up within ${TIMEOUT}s" "$LOGDIR/mariadb.log"
fi
mariadb --protocol=socket -uroot <<EOF || die "could not create the accounting database/user in MariaDB" "$LOGDIR/mariadb.log"
CREATE DATABASE IF NOT EXISTS \`$DB_NAME\`;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON \`$DB_NAME\`.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
EOF

# ----------------------------------------------------------------- munged --
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if ! running "$MUNGE_PID" munged; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID" </dev/null >>"$LOGDIR/munged.out" 2>&1 ||
        die "munged failed to start" /var/log/munge/munged.log "$LOGDIR/munged.out"
fi
wait_for "$TIMEOUT" "munge" munge_ok || die "munge credentials do not round-trip" /var/log/munge/munged.log

# --------------------------------------------------------------- slurmdbd --
if ((dbd_changed)); then stop_daemon "$DBD_PID" slurmdbd; fi
dbd_ok() { sacctmgr -n -P show cluster >/dev/null 2>&1; }
if ! running "$DBD_PID" slurmdbd; then
    log "starting slurmdbd"
    slurmdbd </dev/null >>"$LOGDIR/slurmdbd.out" 2>&1 || die "slurmdbd failed to start" "$LOGDIR/slurmdbd.log" "$LOGDIR/slurmdbd.out"
fi
wait_for "$TIMEOUT" "slurmdbd" dbd_ok || die "slurmdbd does not answer sacctmgr within ${TIMEOUT}s" "$LOGDIR/slurmdbd.log"

# Register the cluster, a default account and the users (before slurmctld
# starts, so it finds its cluster in the database at once).
sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER" ||
    die "could not register cluster $CLUSTER in slurmdbd" "$LOGDIR/slurmdbd.log"
sacctmgr -i -Q add account "$ACCOUNT" cluster="$CLUSTER" description="default account" organization=local >/dev/null 2>&1 || true
users=(root)
[[ -n ${SUDO_USER:-} && ${SUDO_USER} != root ]] && users+=("$SUDO_USER")
for u in ${SLURM_EXTRA_USERS:-}; do users+=("$u"); done
for u in "${users[@]}"; do
    id "$u" >/dev/null 2>&1 || { log "skipping unknown user $u"; continue; }
    if ! sacctmgr -n -P show assoc where user="$u" account="$ACCOUNT" cluster="$CLUSTER" format=user | grep -qx "$u"; then
        sacctmgr -i -Q add user "$u" account="$ACCOUNT" cluster="$CLUSTER" defaultaccount="$ACCOUNT" >/dev/null 2>&1 ||
            die "could not add user $u to accounting" "$LOGDIR/slurmdbd.log"
    fi
done

# -------------------------------------------------------- slurmctld/slurmd --
# Every slurmd of this host, whichever node it serves (a node dropped from the
# config included).
stop_slurmds() {
    local pid
    while pid=$(live_by_name slurmd); do
        log "stopping slurmd (pid $pid) to pick up a config change"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.1; done
        alive "$pid" && kill -KILL "$pid" 2>/dev/null
    done
    rm -f /run/slurmd.pid /run/slurmd-*.pid
}
if ((conf_changed)); then
    stop_slurmds
    stop_daemon "$CTLD_PID" slurmctld
fi
if ! running "$CTLD_PID" slurmctld; then
    log "starting slurmctld"
    slurmctld </dev/null >>"$LOGDIR/slurmctld.out" 2>&1 || die "slurmctld failed to start" "$LOGDIR/slurmctld.log" "$LOGDIR/slurmctld.out"
fi
wait_for "$TIMEOUT" "slurmctld" scontrol ping || die "slurmctld does not answer 'scontrol ping' within ${TIMEOUT}s" "$LOGDIR/slurmctld.log"

# start_slurmd <node>: this host's node in this UTS namespace; a virtual node in
# a new one named after it (slurmd daemonizes inside it).
start_slurmd() {
    local node=$1
    pid_alive "$(slurmd_pid "$node")" slurmd && return 0
    log "starting slurmd for node $node"
    install -d -m 755 "/var/spool/slurmd/$node"
    if [[ $node == "$NODE" ]]; then
        slurmd </dev/null >>"$LOGDIR/slurmd.out" 2>&1
    else
        unshare --uts -- sh -c 'hostname "$1" && exec slurmd' sh "$node" </dev/null >>"$LOGDIR/slurmd-$node.out" 2>&1
    fi || die "slurmd for node $node failed to start" "$(slurmd_log "$node")" "$LOGDIR/slurmd.out" "$LOGDIR/slurmd-$node.out"
}
for n in "$NODE" "${VNODE_NAMES[@]}"; do start_slurmd "$n"; done

node_state() { sinfo -h -n "$1" -o '%T' 2>/dev/null | head -n1; }
# A node is usable when its slurmd is alive (slurmctld may still show a dead
# slurmd's node as idle until SlurmdTimeout) and slurmctld lists it as up.
node_ready() {
    local node=$1
    pid_alive "$(slurmd_pid "$node")" slurmd || return 1
    [[ $node != "$NODE" ]] || scontrol show slurmd >/dev/null 2>&1 || return 1
    case $(node_state "$node") in
        idle|mixed|allocated|completing) return 0 ;;
        down*|drain*|fail*)
            # ReturnToService=2 brings it back once slurmd registers; nudge it anyway.
            scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
            return 1 ;;
        *) return 1 ;;
    esac
}
deadline=$(( $(date +%s) + TIMEOUT ))
for n in "$NODE" "${VNODE_NAMES[@]}"; do
    until node_ready "$n"; do
        (( $(date +%s) < deadline )) ||
            die "node $n not usable within ${TIMEOUT}s (state: $(node_state "$n" || echo '?'); slurmd alive: $(pid_alive "$(slurmd_pid "$n")" slurmd && echo yes || echo no))" \
                "$(slurmd_log "$n")" "$LOGDIR/slurmctld.log"
        sleep 0.2
    done
    log "node $n: ok"
done
wait_for "$TIMEOUT" "sacct" sacct -n -X -S now-1hour ||
    die "sacct does not answer within ${TIMEOUT}s" "$LOGDIR/slurmdbd.log" "$LOGDIR/slurmctld.log"

T1=$(date +%s.%N)
printf 'slurm up: cluster=%s node=%s(%s, cpus=%s mem=%sMB defmem/cpu=%sMB gpus=%s) partition=%s virtual nodes=%s (partition multinode) accounting=slurmdbd in %.1fs\n' \
    "$CLUSTER" "$NODE" "$(node_state "$NODE")" "$CPUS" "$REALMEM" "$DEFMEM" "$GPUS_PER_NODE" "$PARTITION" "${VNODE_NAMES[*]:-none}" "$(awk -v a="$T0" -v b="$T1" 'BEGIN { print b - a }')"
