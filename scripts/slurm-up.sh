#!/usr/bin/env bash
# Start a local single-node SLURM cluster for testing the Snakemake SLURM profile.
#
#   scripts/slurm-up.sh            # install (Debian packages) + start; idempotent
#   source "${ONEPASS_SLURM_DIR:-/tmp/onepass-slurm}/env.sh"   # then sbatch/squeue/sacct work
#   scripts/slurm-down.sh          # stop exactly the daemons started here
#
# Daemons (in start order): munged, mariadbd, slurmdbd, slurmctld, slurmd.
# One node (this machine's CPUs and memory, plus GPUs: see ONEPASS_SLURM_GPUS) in two partitions:
# $PARTITION (the default) and, when there are GPUs, $PARTITION-gpu. $DIR/partitions.yaml describes
# them for the SLURM executor plugin's partition selection (profiles/slurm-test points to it), so
# that GPU jobs go to $PARTITION-gpu and the others to $PARTITION, as profiles/slurm/partitions.yaml
# does on a real cluster.
# Everything (configs, munge key, database, state, pid files, logs) lives under one
# directory, $ONEPASS_SLURM_DIR (default /tmp/onepass-slurm), except for one symbolic link,
# /etc/slurm/slurm.conf -> $DIR/etc/slurm.conf (see below; removed by slurm-down.sh).
# Client commands find the cluster through SLURM_CONF (written to $DIR/env.sh) or that link.
# Changed settings are applied on the next call (the daemons concerned are restarted).
# Needs root (Debian 12 tested, no systemd required).
#
# Settings (environment):
#   ONEPASS_SLURM_DIR        state directory                  [/tmp/onepass-slurm]
#   ONEPASS_SLURM_PARTITION  partition name (the GPU one: NAME-gpu)  [onepass]
#   ONEPASS_SLURM_PORT_BASE  slurmctld port; slurmd, slurmdbd and mariadb use the
#                            next three ports                 [6817]
#   ONEPASS_SLURM_CGROUP     1: proctrack/cgroup + task/cgroup with cgroup v1 (memory
#                            enforced by the kernel); 0: proctrack/linuxproc + task/none,
#                            memory enforced by polling (OverMemoryKill)     [0]
#   ONEPASS_SLURM_GPUS       stand-in GPUs (gres/gpu) where the machine has no NVIDIA
#                            device; 0: none                  [1]
#   ONEPASS_SLURM_NO_APT     1: never run apt-get             [0]
set -euo pipefail

DIR=${ONEPASS_SLURM_DIR:-/tmp/onepass-slurm}
PARTITION=${ONEPASS_SLURM_PARTITION:-onepass}
PORT=${ONEPASS_SLURM_PORT_BASE:-6817}
CGROUP=${ONEPASS_SLURM_CGROUP:-0}
CLUSTER=onepass
CTLD_PORT=$PORT
SLURMD_PORT=$((PORT + 1))
DBD_PORT=$((PORT + 2))
DB_PORT=$((PORT + 3))
DB_PASS=onepass-local-test   # local, 127.0.0.1-only test database

log() { printf '[slurm-up %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"
case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac
T0=$(date +%s%N)

# ---------------------------------------------------------------- packages
need_pkgs=()
command -v munged >/dev/null || need_pkgs+=(munge)
command -v mariadbd >/dev/null || need_pkgs+=(mariadb-server)
command -v slurmdbd >/dev/null || need_pkgs+=(slurmdbd)
{ command -v slurmctld && command -v slurmd && command -v sbatch; } >/dev/null || need_pkgs+=(slurm-wlm)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    [ "${ONEPASS_SLURM_NO_APT:-0}" = 1 ] && die "missing packages: ${need_pkgs[*]}"
    log "installing ${need_pkgs[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    # Debian's maintainer scripts must not start the system services (we start our own): a
    # temporary policy-rc.d denies it, unless the machine already has one.
    POLICY=/usr/sbin/policy-rc.d
    if [ ! -e "$POLICY" ]; then
        printf '#!/bin/sh\n# temporary, scripts/slurm-up.sh\nexit 101\n' >"$POLICY"; chmod 755 "$POLICY"
        trap 'rm -f "$POLICY"' EXIT
    fi
    if ! apt-get install -y --no-install-recommends "${need_pkgs[@]}" >/dev/null 2>&1; then
        apt-get update >/dev/null 2>&1 || true
        apt-get install -y --no-install-recommends "${need_pkgs[@]}" >/dev/null \
            || die "apt-get install ${need_pkgs[*]} failed"
    fi
    if grep -qs 'temporary, scripts/slurm-up.sh' "$POLICY"; then rm -f "$POLICY"; trap - EXIT; fi
fi
SLURM_VERSION=$(slurmctld -V | awk '{print $2}')

# ---------------------------------------------------------------- helpers
# alive NAME EXE: the pid in $DIR/run/NAME.pid is running the binary EXE
pid_of() { local f="$DIR/run/$1.pid"; [ -s "$f" ] && tr -dc '0-9' <"$f"; }
alive() {
    local pid exe
    pid=$(pid_of "$1") || return 1
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
    [ "${exe% (deleted)}" = "$(readlink -f "$(command -v "$2")")" ]
}
wait_for() {  # wait_for SECONDS DESCRIPTION CMD...
    local t=$1; shift 2   # $2: what is awaited (for the reader)
    local end=$(( $(date +%s) + t ))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$end" ] || return 1
        sleep 0.2
    done
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# write_if_changed FILE MODE OWNER <content on stdin>
CHANGED=()   # config files rewritten with new content by this call
write_if_changed() {
    local tmp; tmp=$(mktemp "$1.XXXX")
    cat >"$tmp"
    if [ -f "$1" ] && cmp -s "$tmp" "$1"; then rm -f "$tmp"; else
        [ -f "$1" ] && CHANGED+=("$(basename "$1")")
        mv -f "$tmp" "$1"
    fi
    chmod "$2" "$1"; chown "$3" "$1"
}
# stop_daemon NAME EXE: end a daemon this script started (pid file), e.g. to apply a new config
stop_daemon() {
    local pid; pid=$(pid_of "$1") || return 0
    alive "$1" "$2" || return 0
    log "restarting $1 (its configuration changed)"
    kill -TERM "$pid" 2>/dev/null || true
    wait_for 30 "$1 to stop" bash -c "! kill -0 $pid 2>/dev/null || [ \"\$(awk '{print \$3}' /proc/$pid/stat)\" = Z ]" \
        || { kill -KILL "$pid" 2>/dev/null || true; sleep 1; }
    rm -f "$DIR/run/$1.pid"
}

# ---------------------------------------------------------------- layout
HOST=$(hostname -s)
mkdir -p "$DIR"/{etc,run,log,state/slurmctld,state/slurmd,munge,mysql,tmp}
chmod 755 "$DIR" "$DIR"/{etc,run,log,state}
chown munge:munge "$DIR/munge"; chmod 755 "$DIR/munge"
chown mysql:mysql "$DIR/mysql"; chmod 750 "$DIR/mysql"
# munged writes its own pid/log files, so they live in its directory; link them into run/ and log/.
ln -sfn ../munge/munged.pid "$DIR/run/munged.pid"
ln -sfn ../munge/munged.log "$DIR/log/munged.log"
SOCK="$DIR/munge/munge.socket.2"
DBSOCK="$DIR/mysql/mysqld.sock"

if [ ! -s "$DIR/munge/munge.key" ]; then
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
fi
chown munge:munge "$DIR/munge/munge.key"; chmod 400 "$DIR/munge/munge.key"

# ---------------------------------------------------------------- slurm configs
read -r NODE_HW < <(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //' )
NODE_MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$NODE_HW")
NODE_CPUS=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$NODE_HW")
DEF_MEM_PER_CPU=$(( NODE_MEM / NODE_CPUS / 4 ))
[ "$DEF_MEM_PER_CPU" -gt 1000 ] && DEF_MEM_PER_CPU=1000
# GPUs as gres/gpu, so that GPU requests (--gpus=N) are accepted and accounted as on a real
# cluster: the machine's NVIDIA devices if it has any, else ONEPASS_SLURM_GPUS (default 1) stand-in
# devices ($DIR/dev/gpuN, character devices like /dev/null: slurmd drops GPUs without a device
# file). Jobs then see CUDA_VISIBLE_DEVICES, but there is no GPU behind a stand-in.
NV_DEVS=$(ls /dev/nvidia[0-9]* 2>/dev/null | sort -V || true)
if [ -n "$NV_DEVS" ]; then
    GPUS=$(wc -l <<<"$NV_DEVS")
    GRES_LINE="Name=gpu File=/dev/nvidia[0-$((GPUS - 1))]"
else
    GPUS=${ONEPASS_SLURM_GPUS:-1}
    mkdir -p "$DIR/dev"
    for ((i = 0; i < GPUS; i++)); do
        [ -c "$DIR/dev/gpu$i" ] || mknod "$DIR/dev/gpu$i" c 1 3 2>/dev/null || { GPUS=0; break; }
    done
    GRES_LINE="Name=gpu File=$DIR/dev/gpu[0-$((GPUS - 1))]"
fi
GPU_PARTITION="$PARTITION-gpu"
if [ "$GPUS" -gt 0 ]; then
    GRES_NODE="Gres=gpu:$GPUS"
    GPU_PARTITION_LINE="PartitionName=$GPU_PARTITION Nodes=$HOST Default=NO MaxTime=INFINITE State=UP"
else
    GRES_NODE=""; GRES_LINE="# no GPUs"; GPU_PARTITION_LINE="# no GPUs, no $GPU_PARTITION"
fi
if [ "$CGROUP" = 1 ]; then
    PROCTRACK="ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup
JobAcctGatherType=jobacct_gather/cgroup"
else
    PROCTRACK="ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherParams=OverMemoryKill"
fi

write_if_changed "$DIR/etc/slurm.conf" 644 root:root <<EOF
# generated by scripts/slurm-up.sh -- local single-node test cluster
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$SOCK
CredType=cred/munge
StateSaveLocation=$DIR/state/slurmctld
SlurmdSpoolDir=$DIR/state/slurmd
TmpFS=$DIR/tmp
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
$PROCTRACK
JobAcctGatherFrequency=task=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# the munge socket for talking to slurmdbd (default would be /run/munge/munge.socket.2)
AccountingStoragePass=$SOCK
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$DEF_MEM_PER_CPU
MailProg=/bin/true
ReturnToService=2
# finished jobs stay visible to squeue for 10 minutes (>= 3x the status-check delay)
MinJobAge=600
KillWait=5
InactiveLimit=0
SlurmctldTimeout=60
SlurmdTimeout=60
GresTypes=gpu
AccountingStorageTRES=gres/gpu
# sacct shows each job's comment (the plugin's rule_<rule>_wildcards_<...>)
AccountingStoreFlags=job_comment
NodeName=$HOST NodeAddr=127.0.0.1 $NODE_HW $GRES_NODE State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
$GPU_PARTITION_LINE
EOF

# The partitions for the executor plugin's partition selection (slurm-partition-config; format of
# profiles/slurm/partitions.yaml): GPU jobs fit only $GPU_PARTITION, and the plugin prefers
# $PARTITION for the others (it marks down partitions with GPUs for jobs without).
{
    echo "# generated by scripts/slurm-up.sh: the local test cluster's partitions (profiles/slurm-test)"
    echo "partitions:"
    echo "  $PARTITION:"
    echo "    max_mem_mb: $NODE_MEM"
    echo "    max_threads: $NODE_CPUS"
    echo "    max_gpu: 0"
    if [ "$GPUS" -gt 0 ]; then
        echo "  $GPU_PARTITION:"
        echo "    max_mem_mb: $NODE_MEM"
        echo "    max_threads: $NODE_CPUS"
        echo "    max_gpu: $GPUS"
    fi
} | write_if_changed "$DIR/partitions.yaml" 644 root:root

write_if_changed "$DIR/etc/gres.conf" 644 root:root <<EOF
$GRES_LINE
EOF

write_if_changed "$DIR/etc/cgroup.conf" 644 root:root <<EOF
CgroupPlugin=cgroup/v1
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=yes
ConstrainSwapSpace=no
EOF

write_if_changed "$DIR/etc/slurmdbd.conf" 600 root:root <<EOF
# generated by scripts/slurm-up.sh
AuthType=auth/munge
AuthInfo=socket=$SOCK
DbdHost=$HOST
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF

write_if_changed "$DIR/env.sh" 644 root:root <<EOF
# source this file to use the local test cluster
export SLURM_CONF=$DIR/etc/slurm.conf
export ONEPASS_SLURM_DIR=$DIR
export ONEPASS_SLURM_PARTITION=$PARTITION
EOF
export SLURM_CONF="$DIR/etc/slurm.conf"

# The one file outside $DIR: /etc/slurm/slurm.conf -> $DIR/etc/slurm.conf. Jobs need it:
# snakemake-executor-plugin-slurm-jobstep strips SLURM_* (SLURM_CONF too) from the
# environment of the srun it runs inside each job, so srun falls back to the default path.
# An existing file that is not such a link is left alone (jobs using srun then fail).
SYSCONF=/etc/slurm/slurm.conf
if [ ! -e "$SYSCONF" ] || { [ -L "$SYSCONF" ] && head -1 "$SYSCONF" | grep -q '^# generated by scripts/slurm-up.sh'; }; then
    mkdir -p /etc/slurm
    [ "$(readlink "$SYSCONF" 2>/dev/null)" = "$SLURM_CONF" ] || ln -sfn "$SLURM_CONF" "$SYSCONF"
else
    log "WARNING: $SYSCONF exists and is not ours; srun inside jobs will not find this cluster"
fi

# A configuration that changed under running daemons: restart the ones that read it.
for f in "${CHANGED[@]}"; do
    case "$f" in
        slurmdbd.conf) stop_daemon slurmd slurmd; stop_daemon slurmctld slurmctld; stop_daemon slurmdbd slurmdbd ;;
        slurm.conf|gres.conf|cgroup.conf) stop_daemon slurmd slurmd; stop_daemon slurmctld slurmctld ;;
    esac
done

# ---------------------------------------------------------------- munged
if ! alive munged munged; then
    log "starting munged"
    runuser -u munge -- munged --socket="$SOCK" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
        --seed-file="$DIR/munge/munged.seed" </dev/null >>"$DIR/log/munged.out" 2>&1 \
        || die "munged failed: $(tail -3 "$DIR/munge/munged.log" 2>/dev/null)"
    wait_for 10 munged alive munged munged || die "munged did not start"
fi
wait_for 10 "munge socket" bash -c "munge -n -S '$SOCK' | unmunge -S '$SOCK'" || die "munge does not work"

# ---------------------------------------------------------------- mariadbd
if ! alive mariadbd mariadbd; then
    if [ ! -d "$DIR/mysql/data/mysql" ]; then
        log "initialising the accounting database"
        runuser -u mysql -- mariadb-install-db --no-defaults --datadir="$DIR/mysql/data" \
            --auth-root-authentication-method=socket --skip-test-db \
            >"$DIR/log/mariadb-install-db.log" 2>&1 || die "mariadb-install-db failed (see $DIR/log/mariadb-install-db.log)"
    fi
    log "starting mariadbd"
    rm -f "$DBSOCK"
    setsid mariadbd --no-defaults --user=mysql --datadir="$DIR/mysql/data" --socket="$DBSOCK" \
        --pid-file="$DIR/mysql/mariadbd.pid" --log-error="$DIR/log/mariadbd.log" \
        --bind-address=127.0.0.1 --port="$DB_PORT" --skip-name-resolve \
        --innodb-buffer-pool-size=64M --innodb-log-file-size=16M --performance-schema=OFF \
        --max-connections=50 </dev/null >>"$DIR/log/mariadbd.out" 2>&1 &
    echo $! >"$DIR/run/mariadbd.pid"
    wait_for 60 mariadbd mariadb-admin --no-defaults --socket="$DBSOCK" ping \
        || die "mariadbd did not start (see $DIR/log/mariadbd.log)"
fi
mariadb --no-defaults --socket="$DBSOCK" -u root <<EOF || die "database set-up failed"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF

# ---------------------------------------------------------------- slurmdbd
if ! alive slurmdbd slurmdbd; then
    log "starting slurmdbd"
    slurmdbd </dev/null >>"$DIR/log/slurmdbd.out" 2>&1 || die "slurmdbd failed (see $DIR/log/slurmdbd.log)"
    wait_for 60 slurmdbd port_open "$DBD_PORT" || die "slurmdbd does not listen (see $DIR/log/slurmdbd.log)"
fi
if ! sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"; then
    wait_for 30 sacctmgr sacctmgr -n list cluster || die "sacctmgr cannot reach slurmdbd"
    sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster failed"
fi

# ---------------------------------------------------------------- slurmctld, slurmd
if ! alive slurmctld slurmctld; then
    log "starting slurmctld"
    slurmctld -i </dev/null >>"$DIR/log/slurmctld.out" 2>&1 || die "slurmctld failed (see $DIR/log/slurmctld.log)"
    wait_for 30 slurmctld scontrol ping || die "slurmctld does not answer (see $DIR/log/slurmctld.log)"
fi
if ! alive slurmd slurmd; then
    log "starting slurmd"
    slurmd </dev/null >>"$DIR/log/slurmd.out" 2>&1 || die "slurmd failed (see $DIR/log/slurmd.log)"
fi
node_ready() { sinfo -h -n "$HOST" -o %t | grep -Eq '^(idle|mix|alloc)'; }
if ! wait_for 30 node node_ready; then
    scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    wait_for 15 node node_ready || die "node $HOST not ready: $(sinfo -h -N -o '%N %t %E')"
fi

MS=$(( ($(date +%s%N) - T0) / 1000000 ))
PARTS=$PARTITION; [ "$GPUS" -gt 0 ] && PARTS="$PARTS, $GPU_PARTITION ($GPUS GPU)"
log "SLURM $SLURM_VERSION up in $((MS / 1000)).$(printf %03d $((MS % 1000))) s: cluster $CLUSTER, partitions $PARTS, node $HOST ($NODE_HW)"
log "use it with:  source $DIR/env.sh"
echo "export SLURM_CONF=$DIR/etc/slurm.conf"
