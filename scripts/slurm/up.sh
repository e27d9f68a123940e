#!/usr/bin/env bash
# Bring up a real single-node SLURM cluster on localhost (slurmctld + slurmd +
# slurmdbd backed by MariaDB, munge authentication) for integration tests.
#
# Idempotent: installs only missing packages, rewrites configs only when their
# content changes (restarting the affected daemons), starts only daemons that
# are not already running, then waits until `sinfo` shows the node idle and
# `sacct` answers. Works without systemd (containers): every daemon is started
# directly and tracked by its pid file, so scripts/slurm/down.sh can stop it.
#
# Usage (as root):  bash scripts/slurm/up.sh
# Environment:
#   SLURM_UP_TIMEOUT   seconds to wait for each daemon / the node (default 60)
#   SLURM_EXTRA_USERS  space-separated extra users to register in accounting
set -euo pipefail

T0=$(date +%s.%N)
TIMEOUT=${SLURM_UP_TIMEOUT:-60}

CLUSTER=localcluster
PARTITION=debug
ACCOUNT=default
LOGDIR=/var/log/slurm
CONF=/etc/slurm/slurm.conf
DBDCONF=/etc/slurm/slurmdbd.conf
DB_NAME=slurm_acct_db
DB_USER=slurm
MYSQL_RUN=/run/mysqld
MYSQL_PID=$MYSQL_RUN/mysqld.pid
MUNGE_PID=/run/munge/munged.pid
DBD_PID=/run/slurmdbd.pid
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid

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
install -d -m 755 /var/spool/slurmd /etc/slurm
install -d -m 700 -o munge -g munge /etc/munge /var/lib/munge /var/log/munge
install -d -m 755 -o munge -g munge /run/munge
install -d -m 755 -o mysql -g mysql "$MYSQL_RUN"

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
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
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
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS Sockets=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$REALMEM State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
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
if ((conf_changed)); then
    stop_daemon "$SLURMD_PID" slurmd
    stop_daemon "$CTLD_PID" slurmctld
fi
if ! running "$CTLD_PID" slurmctld; then
    log "starting slurmctld"
    slurmctld </dev/null >>"$LOGDIR/slurmctld.out" 2>&1 || die "slurmctld failed to start" "$LOGDIR/slurmctld.log" "$LOGDIR/slurmctld.out"
fi
wait_for "$TIMEOUT" "slurmctld" scontrol ping || die "slurmctld does not answer 'scontrol ping' within ${TIMEOUT}s" "$LOGDIR/slurmctld.log"

if ! running "$SLURMD_PID" slurmd; then
    log "starting slurmd"
    slurmd </dev/null >>"$LOGDIR/slurmd.out" 2>&1 || die "slurmd failed to start" "$LOGDIR/slurmd.log" "$LOGDIR/slurmd.out"
fi

node_state() { sinfo -h -n "$NODE" -o '%T' 2>/dev/null | head -n1; }
# The node is usable when the local slurmd answers (slurmctld may still show a
# dead slurmd's node as idle until SlurmdTimeout) and slurmctld lists it as up.
node_ready() {
    scontrol show slurmd >/dev/null 2>&1 || return 1
    case $(node_state) in
        idle|mixed|allocated|completing) return 0 ;;
        down*|drain*|fail*)
            # ReturnToService=2 brings it back once slurmd registers; nudge it anyway.
            scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
            return 1 ;;
        *) return 1 ;;
    esac
}
deadline=$(( $(date +%s) + TIMEOUT ))
until node_ready; do
    running "$SLURMD_PID" slurmd || die "slurmd exited right after starting" "$LOGDIR/slurmd.log" "$LOGDIR/slurmd.out"
    (( $(date +%s) < deadline )) ||
        die "node $NODE not usable within ${TIMEOUT}s (state: $(node_state || echo '?'))" "$LOGDIR/slurmd.log" "$LOGDIR/slurmctld.log"
    sleep 0.2
done
log "node $NODE: ok"
wait_for "$TIMEOUT" "sacct" sacct -n -X -S now-1hour ||
    die "sacct does not answer within ${TIMEOUT}s" "$LOGDIR/slurmdbd.log" "$LOGDIR/slurmctld.log"

T1=$(date +%s.%N)
printf 'slurm up: cluster=%s node=%s(%s, cpus=%s mem=%sMB defmem/cpu=%sMB) partition=%s accounting=slurmdbd in %.1fs\n' \
    "$CLUSTER" "$NODE" "$(node_state)" "$CPUS" "$REALMEM" "$DEFMEM" "$PARTITION" "$(awk -v a="$T0" -v b="$T1" 'BEGIN { print b - a }')"
