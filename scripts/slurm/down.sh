#!/usr/bin/env bash
# Stop the single-node SLURM test cluster started by scripts/slurm/up.sh:
# slurmd, slurmctld, slurmdbd, munged and mariadb, in that order.
# Idempotent: a daemon that is not running is skipped without error.
# Daemons are found by the pid files up.sh gives them; when a pid file is
# missing, the one process with that exact executable name is used.
# State (job history in slurmdbd, slurmctld state) is kept for the next up.sh.
set -uo pipefail

log() { printf '[slurm-down] %s\n' "$*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    log "ERROR: must run as root (try: sudo bash $0)"
    exit 1
fi

# alive <pid>: the process exists and is not a zombie (PID 1 in a container
# may reap orphaned daemons late, and kill -0 succeeds on a zombie).
alive() {
    local st
    st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null) || return 1
    [[ -n $st && $st != Z ]]
}

# live_by_name <exe-name>: print the pid of a live (non-zombie) process of that name.
live_by_name() {
    local f p
    for f in /proc/[0-9]*/comm; do
        [[ $(cat "$f" 2>/dev/null) == "$1" ]] || continue
        p=${f#/proc/}; p=${p%/comm}
        if alive "$p"; then echo "$p"; return 0; fi
    done
    return 1
}

find_pid() {  # <pidfile> <exe-name>
    local pidfile=$1 name=$2 pid=""
    if [[ -r $pidfile ]]; then
        pid=$(tr -dc '0-9' <"$pidfile")
        if [[ -n $pid ]] && alive "$pid" && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]; then
            echo "$pid"; return 0
        fi
    fi
    live_by_name "$name"
}

stop() {  # <pidfile> <exe-name> [grace seconds]
    local pidfile=$1 name=$2 grace=${3:-15} pid i
    pid=$(find_pid "$pidfile" "$name") || true
    if [[ -z ${pid:-} ]]; then
        log "$name: not running"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
        if ! alive "$pid"; then
            log "$name: stopped (pid $pid)"
            rm -f "$pidfile"
            return 0
        fi
        sleep 0.1
    done
    log "$name: did not exit within ${grace}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

stop /run/slurmd.pid slurmd
stop /run/slurmctld.pid slurmctld
stop /run/slurmdbd.pid slurmdbd
stop /run/munge/munged.pid munged
stop /run/mysqld/mysqld.pid mariadbd 30
log "done"
