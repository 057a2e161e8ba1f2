#!/usr/bin/env bash
# A real SLURM cluster on this machine, for tests and for trying the sbatch templates.
#
#   scripts/slurm_cluster.sh up [--nodes 1|2]   install (if missing), configure, start, wait for idle
#   scripts/slurm_cluster.sh down               stop the daemons (by their PID files, never by name)
#   scripts/slurm_cluster.sh status             daemons, nodes and queue
#
# Debian's packages (slurmctld slurmd slurm-client munge), started directly: no systemd here.
# One node is this host; two nodes are emulated with two slurmd (node1, node2) on 127.0.0.1
# (Debian builds SLURM with multiple-slurmd support). Must run as root.
#
# Environment:
#   SLURM_CI_ROOT     scratch folder for state, spool, PID files and logs (default /tmp/pipeline-slurm)
#   SLURM_CI_TIMEOUT  seconds to wait for the nodes to become idle (default 60)
#
# Settings that matter (found on SLURM 22.05, Debian 12):
#   ProctrackType=proctrack/linuxproc, TaskPlugin=task/none   no cgroups/systemd needed
#   SelectType=select/cons_tres + CR_Core_Memory + DefMemPerCPU  else one job takes all memory
#   AuthInfo=cred_expire=10, bf_interval=2, sched_interval=2    else a requeued job waits 121 s
#   MailProg=/bin/true                                          else "MailProg is invalid"
set -euo pipefail

ROOT="${SLURM_CI_ROOT:-/tmp/pipeline-slurm}"
TIMEOUT="${SLURM_CI_TIMEOUT:-60}"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
MARKER="# written by pipeline scripts/slurm_cluster.sh"
HOSTS_MARKER="# pipeline-slurm emulated nodes"
MUNGE_PID=/run/munge/munged.pid

log() { echo "[slurm_cluster] $*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

usage() {
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-2}"
}

# -- helpers ---------------------------------------------------------------------------------

# pid_alive PIDFILE NAME: the PID in PIDFILE is a live process whose command is NAME
# (guards against a stale PID file whose number was reused by another process).
pid_alive() {
    local pid
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] && proc_running "$pid" "$2"
}

# proc_running PID NAME: PID is a live (not zombie) process whose command is NAME
proc_running() {
    local stat
    [[ $(cat "/proc/$1/comm" 2>/dev/null) == "$2" ]] || return 1
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# stop_pidfile PIDFILE NAME: TERM the process, wait up to 10 s, then KILL it.
stop_pidfile() {
    local pidfile=$1 name=$2 pid i
    if pid_alive "$pidfile" "$name"; then
        pid=$(<"$pidfile")
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            proc_running "$pid" "$name" || break
            sleep 0.1
        done
        if proc_running "$pid" "$name"; then
            log "$name (pid $pid) did not stop within 10 s: killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidfile"
}

# node_names N: the node names for N nodes
node_names() {
    if [[ $1 == 1 ]]; then hostname -s; else echo node1 node2; fi
}

log_tails() {
    local f
    for f in "$ROOT"/log/*.log; do
        [[ -f $f ]] || continue
        echo "----- last lines of $f -----" >&2
        tail -n 25 "$f" >&2
    done
}

# -- install ---------------------------------------------------------------------------------

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    if ((${#missing[@]})); then
        log "installing ${missing[*]} (apt-get, --no-install-recommends)"
        command -v apt-get >/dev/null || die "apt-get not found: install ${missing[*]} yourself"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
    fi
}

# -- munge -----------------------------------------------------------------------------------

start_munge() {
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        install -d -o munge -g munge -m 700 /etc/munge
        mungekey -c -f
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    install -d -o munge -g munge -m 755 /run/munge
    if ! pid_alive "$MUNGE_PID" munged; then
        rm -f "$MUNGE_PID" /run/munge/munge.socket.2*
        log "starting munged"
        runuser -u munge -- /usr/sbin/munged
    fi
    local i
    for ((i = 0; i < 50; i++)); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "munge does not work: 'munge -n | unmunge' fails; see /var/log/munge/munged.log"
}

# -- configuration ---------------------------------------------------------------------------

write_conf() { # write_conf NODES OUTFILE
    local nodes=$1 out=$2 host mem_kb mem cpus
    host=$(hostname -s)
    mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
    mem=$((mem_kb * 8 / 10 / 1024)) # 80% of MemTotal in MB
    cpus=$(nproc)
    {
        echo "$MARKER (nodes=$nodes)"
        cat <<EOF
ClusterName=ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
AuthInfo=cred_expire=10
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2,sched_interval=2
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool/%n
SlurmctldPidFile=$ROOT/slurmctld.pid
SlurmdPidFile=$ROOT/slurmd-%n.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd-%n.log
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$ROOT/log/jobcomp.txt
KillWait=5
MinJobAge=300
InactiveLimit=0
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=30
EOF
        if [[ $nodes == 1 ]]; then
            echo "NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN"
        else
            local per=$((cpus / 2))
            ((per >= 1)) || per=1
            echo "NodeName=node[1-2] NodeHostname=$host NodeAddr=127.0.0.1 Port=17001-17002" \
                "CPUs=$per RealMemory=$((mem / 2)) State=UNKNOWN"
        fi
        echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
    } >"$out"
}

# map node1/node2 to 127.0.0.1 (the templates take the main address from the node list)
ensure_hosts() {
    grep -qF "$HOSTS_MARKER" /etc/hosts 2>/dev/null && return 0
    log "mapping node1 node2 to 127.0.0.1 in /etc/hosts"
    printf '127.0.0.1 node1 node2 %s\n' "$HOSTS_MARKER" >>/etc/hosts ||
        die "cannot write /etc/hosts: add '127.0.0.1 node1 node2' to it yourself"
}

# -- daemons ---------------------------------------------------------------------------------

stop_slurm() {
    local f name
    for f in "$ROOT"/slurmd-*.pid; do
        [[ -e $f ]] && stop_pidfile "$f" slurmd
    done
    stop_pidfile "$ROOT/slurmctld.pid" slurmctld
}

slurm_running() { # slurm_running NODES: every daemon of this layout is alive
    local n
    pid_alive "$ROOT/slurmctld.pid" slurmctld || return 1
    for n in $(node_names "$1"); do
        pid_alive "$ROOT/slurmd-$n.pid" slurmd || return 1
    done
}

nodes_idle() { # all nodes of the partition idle (or mixed/allocated: up and usable)
    local states
    states=$(sinfo -h -N -o '%N %T' 2>/dev/null) || return 1
    [[ -n $states ]] || return 1
    ! grep -qvE ' (idle|mixed|allocated|completing)$' <<<"$states"
}

wait_idle() { # wait_idle NODES: our daemons alive and every node usable
    local i
    for ((i = 0; i < TIMEOUT * 2; i++)); do
        if slurm_running "$1" && nodes_idle; then
            log "ready: $(sinfo -h -N -o '%N=%T' | tr '\n' ' ')"
            return 0
        fi
        sleep 0.5
    done
    log "not ready after ${TIMEOUT} s:"
    sinfo -N -l >&2 || true
    cmd_status >&2 || true
    log_tails
    die "the cluster did not come up (logs in $ROOT/log)"
}

cmd_up() {
    local nodes=1
    while (($#)); do
        case $1 in
        --nodes) nodes=${2:-}; shift 2 || usage ;;
        --nodes=*) nodes=${1#--nodes=}; shift ;;
        -h | --help) usage 0 ;;
        *) log "unknown argument: $1"; usage ;;
        esac
    done
    [[ $nodes == 1 || $nodes == 2 ]] || die "--nodes must be 1 or 2, not '$nodes'"
    ((EUID == 0)) || die "must run as root (it installs packages and starts daemons)"

    install_packages
    mkdir -p "$ROOT/state" "$ROOT/log" "$ROOT/spool"
    [[ $nodes == 2 ]] && ensure_hosts
    start_munge

    local new="$ROOT/slurm.conf.new"
    write_conf "$nodes" "$new"
    if [[ -f $CONF ]] && cmp -s "$new" "$CONF" && slurm_running "$nodes" && nodes_idle; then
        rm -f "$new"
        log "already up with $nodes node(s)"
        sinfo -h -N -o '%N=%T' | tr '\n' ' ' >&2
        echo >&2
        return 0
    fi

    # (re)start from a clean state: node names change between layouts, old jobs are meaningless
    stop_slurm
    if [[ -f $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
        log "keeping the existing $CONF as $CONF.pipeline-backup"
        cp -p "$CONF" "$CONF.pipeline-backup"
    fi
    mkdir -p "$CONF_DIR"
    mv "$new" "$CONF"
    cp "$CONF" "$ROOT/slurm.conf"
    rm -rf "$ROOT/state" "$ROOT/spool"
    mkdir -p "$ROOT/state" "$ROOT/spool"

    log "starting slurmctld"
    slurmctld
    local n
    for n in $(node_names "$nodes"); do
        mkdir -p "$ROOT/spool/$n"
        log "starting slurmd ($n)"
        if [[ $nodes == 1 ]]; then slurmd; else slurmd -N "$n"; fi
    done
    wait_idle "$nodes"
}

cmd_down() {
    stop_slurm
    stop_pidfile "$MUNGE_PID" munged
    log "down"
}

cmd_status() {
    local f ok=0
    if pid_alive "$ROOT/slurmctld.pid" slurmctld; then
        echo "slurmctld: running (pid $(<"$ROOT/slurmctld.pid"))"
    else
        echo "slurmctld: not running"
        ok=1
    fi
    for f in "$ROOT"/slurmd-*.pid; do
        [[ -e $f ]] || continue
        if pid_alive "$f" slurmd; then
            echo "$(basename "$f" .pid): running (pid $(<"$f"))"
        else
            echo "$(basename "$f" .pid): not running"
        fi
    done
    if pid_alive "$MUNGE_PID" munged; then echo "munged: running"; else echo "munged: not running"; fi
    if ((ok == 0)); then
        sinfo -N || ok=1
        squeue || true
    fi
    return $ok
}

case ${1:-} in
up) shift; cmd_up "$@" ;;
down) shift; cmd_down "$@" ;;
status) shift; cmd_status "$@" ;;
-h | --help) usage 0 ;;
*) usage ;;
esac
