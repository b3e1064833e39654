#!/usr/bin/env bash
# Stop the local test cluster started by scripts/slurm-up.sh.
#
#   scripts/slurm-down.sh           # cancel jobs, stop the daemons, keep $DIR (logs, database)
#   scripts/slurm-down.sh --purge   # ... and delete $DIR
#
# Only the daemons whose pid files are in $ONEPASS_SLURM_DIR/run (default
# /tmp/onepass-slurm/run) are stopped, and only if the pid still runs the expected
# binary; nothing is killed by name. Returns once every one of them is gone.
# Idempotent: stopping a stopped cluster is a no-op.
set -euo pipefail

DIR=${ONEPASS_SLURM_DIR:-/tmp/onepass-slurm}
case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac
PURGE=0
for a in "$@"; do
    case "$a" in
        --purge) PURGE=1 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "unknown argument: $a" >&2; exit 2 ;;
    esac
done

log() { printf '[slurm-down %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
[ -d "$DIR" ] || { log "nothing to stop ($DIR does not exist)"; exit 0; }
export SLURM_CONF="$DIR/etc/slurm.conf"

pid_of() { local f="$DIR/run/$1.pid"; [ -s "$f" ] && tr -dc '0-9' <"$f"; }
# running NAME EXE -> prints the pid if the pid file's process runs the binary EXE
running() {
    local pid exe want
    pid=$(pid_of "$1") || return 1
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
    want=$(readlink -f "$(command -v "$2" 2>/dev/null || echo "/usr/sbin/$2")")
    [ "${exe% (deleted)}" = "$want" ] || return 1
    echo "$pid"
}

stopped=()
stop() {  # stop NAME EXE
    local pid
    if ! pid=$(running "$1" "$2"); then
        rm -f "$DIR/run/$1.pid" 2>/dev/null || true
        return 0
    fi
    log "stopping $1 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do           # up to 30 s
        [ -d "/proc/$pid" ] || break
        # a zombie that is our own child is gone for our purposes
        [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ] && break
        sleep 0.2
    done
    if [ -d "/proc/$pid" ] && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; then
        log "$1 (pid $pid) ignored SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
    fi
    rm -f "$DIR/run/$1.pid"
    stopped+=("$1:$pid")
}

# Cancel whatever is still queued or running, so that no slurmstepd outlives slurmd.
if running slurmctld slurmctld >/dev/null && running slurmd slurmd >/dev/null; then
    jobs=$(squeue -h -o %A 2>/dev/null || true)
    if [ -n "$jobs" ]; then
        log "cancelling jobs: $(echo $jobs)"
        scancel $jobs 2>/dev/null || true
        for _ in $(seq 1 100); do       # up to 20 s
            [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
fi

stop slurmd slurmd
stop slurmctld slurmctld
stop slurmdbd slurmdbd
stop mariadbd mariadbd
stop munged munged

# the link slurm-up.sh made (only if it points into $DIR)
if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$DIR/etc/slurm.conf" ]; then
    rm -f /etc/slurm/slurm.conf
fi

left=()
for s in "${stopped[@]}"; do
    pid=${s#*:}
    if [ -d "/proc/$pid" ] && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; then left+=("$s"); fi
done
if [ ${#left[@]} -gt 0 ]; then log "ERROR: still running: ${left[*]}"; exit 1; fi
log "stopped: ${stopped[*]:-nothing was running}"

if [ "$PURGE" = 1 ]; then
    log "removing $DIR"
    rm -rf --one-file-system "$DIR"
fi
