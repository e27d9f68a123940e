#!/usr/bin/env bash
# Stop the SLURM test cluster started by scripts/slurm/up.sh: every slurmd (this
# host's node and the virtual nodes), slurmctld, slurmdbd, munged and mariadb,
# in that order.
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

# shellcheck source=scripts/slurm/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

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

# One slurmd a node, each with its pid file /run/slurmd-<node>.pid.
for pidfile in /run/slurmd-*.pid; do
    [[ -e $pidfile ]] || continue
    pid=$(tr -dc '0-9' <"$pidfile")
    if [[ -n $pid ]] && alive "$pid" && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == slurmd ]]; then
        stop "$pidfile" slurmd
    else
        rm -f "$pidfile"
    fi
done
# Any slurmd left (one started without these pid files).
while live_by_name slurmd >/dev/null; do stop /nonexistent slurmd; done
stop /run/slurmctld.pid slurmctld
stop /run/slurmdbd.pid slurmdbd
stop /run/munge/munged.pid munged
stop /run/mysqld/mysqld.pid mariadbd 30
log "done"
