# Process helpers shared by up.sh and down.sh (sourced, not run).

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
