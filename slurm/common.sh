# Shared logic of the sbatch templates in this folder; each template sources it:
#     source "${PIPELINE_ROOT:-$SLURM_SUBMIT_DIR}/slurm/common.sh"
# It only defines functions; nothing runs when it is sourced.
#
#   pipeline_init            defaults, venv, run folder, main address and port, training arguments
#   pipeline_gpus_per_node   GPUS_PER_NODE, else the GPUs SLURM allocated
#   pipeline_run_per_node S  one srun task per node runs the command string S; then requeue or exit
#   pipeline_node_exec ...   (inside srun, on every node) runs the launcher, survives USR1
#   pipeline_requeue         scontrol requeue this job (exit 0), or exit 75 when that is impossible
#
# Preemption contract (more in slurm/README.md):
#   - SLURM sends USR1 to the batch shell before the time limit (--signal=B:USR1@120) and TERM
#     to every process on scancel, at the time limit and on preemption.
#   - The batch shell forwards USR1 to srun, which delivers it to EVERY process of the step on
#     every node (and repeats it every PIPELINE_SIGNAL_REPEAT s until the step ends). The
#     launcher (accelerate/torchrun) is started with USR1 ignored, so only the training
#     processes, which install a handler, react: they set a flag, agree at the next step
#     boundary, write a checkpoint, and exit with status 75 once it is complete.
#   - After USR1, or when training exits with 75 on its own, the batch shell runs
#     `scontrol requeue $SLURM_JOB_ID` and exits 0; the requeued job (SLURM_RESTART_COUNT=1, 2, ...)
#     runs the same command and training resumes from the newest valid checkpoint in OUTPUT_DIR.
#   - After TERM the training still checkpoints (within KillWait) but the job is NOT requeued:
#     TERM is also what `scancel` sends, and a job must stay cancellable.
#   - Without scontrol (e.g. in a container) it says so and exits 75 (EX_TEMPFAIL: run me again).

PIPELINE_EXIT_REQUEUE=75

_pipeline_log() { echo "[pipeline-slurm] $(date '+%F %T' 2>/dev/null) $*"; }
_pipeline_die() {
    _pipeline_log "ERROR: $*" >&2
    exit 2
}

# Expand ${SLURM_ARRAY_TASK_ID} and friends (also written $NAME) in a value given at submit time
# in single quotes, e.g. OUTPUT_DIR='runs/sweep-${SLURM_ARRAY_TASK_ID}'. Only these names are
# expanded; user text is never eval'ed.
_pipeline_expand() {
    local s=$1 v
    for v in SLURM_ARRAY_TASK_ID SLURM_ARRAY_JOB_ID SLURM_JOB_ID SLURM_JOB_NAME SLURM_NNODES; do
        s=${s//"\${$v}"/${!v:-}}
        s=${s//"\$$v"/${!v:-}}
    done
    printf '%s' "$s"
}

# First host of the allocation: the main (rank 0, rendezvous) address for every launcher.
_pipeline_first_host() {
    local list=${SLURM_JOB_NODELIST:-${SLURM_NODELIST:-}} first='' prefix range
    if [[ -n $list ]] && command -v scontrol >/dev/null 2>&1; then
        first=$(scontrol show hostnames "$list" 2>/dev/null | head -n 1)
    fi
    if [[ -z $first && -n $list ]]; then
        # no scontrol: expand the common "a,b" and "prefix[01-04,07]" forms by hand
        first=${list%%,*}
        if [[ $list == *\[* ]]; then
            prefix=${list%%\[*}
            range=${list#*\[}
            range=${range%%[],-]*}
            first=$prefix$range
        fi
    fi
    [[ -n $first ]] || first=$(hostname)
    printf '%s' "$first"
}

# Defaults and derived values; each can be set in the environment at submit time.
pipeline_init() {
    PIPELINE_ROOT=${PIPELINE_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
    PIPELINE_COMMON="$PIPELINE_ROOT/slurm/common.sh"
    # The job runs (runs/, relative paths) in PIPELINE_WORKDIR, default PIPELINE_ROOT; `slurm
    # submit` from a pip install sets it to the submitting folder (PIPELINE_ROOT is then the
    # installed package's copy of the templates, no place for runs).
    PIPELINE_WORKDIR=${PIPELINE_WORKDIR:-$PIPELINE_ROOT}
    cd "$PIPELINE_WORKDIR" || _pipeline_die "cannot cd to PIPELINE_WORKDIR=$PIPELINE_WORKDIR"

    # From here on a preemption signal is remembered (and forwarded once the step runs).
    _PIPELINE_GOT_USR1='' _PIPELINE_GOT_TERM='' _PIPELINE_STEP_PID='' _PIPELINE_REPEAT_PID=''
    trap '_pipeline_on_signal USR1' USR1
    trap '_pipeline_on_signal TERM' TERM

    # VENV unset: use $PIPELINE_ROOT/.venv when it exists; VENV= (set, empty): no venv.
    if [[ -z ${VENV+x} ]]; then
        VENV=
        [[ -f $PIPELINE_ROOT/.venv/bin/activate ]] && VENV=$PIPELINE_ROOT/.venv
    fi
    if [[ -n $VENV ]]; then
        [[ -f $VENV/bin/activate ]] || _pipeline_die "VENV=$VENV has no bin/activate"
        # shellcheck disable=SC1091
        source "$VENV/bin/activate"
    fi
    PYTHON=$(command -v "${PYTHON:-python}") || _pipeline_die "python not found (PYTHON=${PYTHON:-python})"
    # shellcheck disable=SC2034 # PY (the quoted interpreter) is used by the templates
    PY=$(printf '%q' "$PYTHON")

    : "${SLURM_JOB_ID:=0}" "${SLURM_NNODES:=1}" "${SLURM_JOB_NAME:=pipeline}"
    OVERRIDES=$(_pipeline_expand "${OVERRIDES:-}")
    OUTPUT_DIR=$(_pipeline_expand "${OUTPUT_DIR:-runs/$SLURM_JOB_NAME-${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}${SLURM_ARRAY_TASK_ID:+_$SLURM_ARRAY_TASK_ID}}")
    # One port per job, so two jobs sharing a node do not collide; stable across a requeue.
    MAIN_PORT=${MAIN_PORT:-$((10000 + SLURM_JOB_ID % 20000))}
    MAIN_ADDR=${MAIN_ADDR:-$(_pipeline_first_host)}

    # What the launcher runs: a script or "-m module", then its arguments (shell words).
    if [[ -n ${PIPELINE_CMD:-} ]]; then
        TRAIN_ARGS=$PIPELINE_CMD
    else
        [[ -n ${CONFIG:-} ]] || _pipeline_die "set CONFIG, e.g. CONFIG=configs/mlm/tiny.yaml sbatch slurm/train-cpu.sbatch"
        local o
        TRAIN_ARGS="-m pipeline train $(printf '%q' "$CONFIG")"
        set -f # overrides are split on blanks, never globbed
        for o in $OVERRIDES; do TRAIN_ARGS+=" $(printf '%q' "$o")"; done
        set +f
        TRAIN_ARGS+=" --output-dir $(printf '%q' "$OUTPUT_DIR")"
    fi
    export PIPELINE_ROOT PIPELINE_WORKDIR OUTPUT_DIR MAIN_ADDR MAIN_PORT
    _pipeline_log "job $SLURM_JOB_ID${SLURM_ARRAY_TASK_ID:+ (array task $SLURM_ARRAY_TASK_ID)}" \
        "restart ${SLURM_RESTART_COUNT:-0} on ${SLURM_JOB_NODELIST:-$(hostname)}:" \
        "nodes=$SLURM_NNODES main=$MAIN_ADDR:$MAIN_PORT output_dir=$OUTPUT_DIR"
}

pipeline_gpus_per_node() {
    local g=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-}}}
    g=${g##*:} # "a100:4" -> 4
    [[ $g =~ ^[1-9][0-9]*$ ]] || _pipeline_die "set GPUS_PER_NODE (or sbatch --gpus-per-node=N); got '$g'"
    printf '%s' "$g"
}

_pipeline_on_signal() {
    if [[ $1 == USR1 ]]; then _PIPELINE_GOT_USR1=1; else _PIPELINE_GOT_TERM=1; fi
    _pipeline_log "batch shell got SIG$1: forwarding USR1 to the job step (checkpoint and stop)"
    [[ -n $_PIPELINE_STEP_PID ]] || return 0
    kill -USR1 "$_PIPELINE_STEP_PID" 2>/dev/null
    # Say it again every PIPELINE_SIGNAL_REPEAT s until the step ends: a process that was still
    # starting (no handler yet) would otherwise never hear it. Handlers only set a flag.
    if [[ -z $_PIPELINE_REPEAT_PID && ${PIPELINE_SIGNAL_REPEAT:-30} != 0 ]]; then
        (
            trap - USR1 TERM
            while sleep "${PIPELINE_SIGNAL_REPEAT:-30}"; do
                kill -USR1 "$_PIPELINE_STEP_PID" 2>/dev/null || exit 0
            done
        ) &
        _PIPELINE_REPEAT_PID=$!
    fi
    return 0
}

# Wait for PID; a trapped signal interrupts `wait`, so wait again until it really exited.
_pipeline_wait() {
    local pid=$1 rc
    while :; do
        wait "$pid"
        rc=$?
        if ((rc > 128)) && kill -0 "$pid" 2>/dev/null; then continue; fi
        return "$rc"
    done
}

pipeline_requeue() {
    trap - USR1 TERM
    if ! command -v scontrol >/dev/null 2>&1; then
        _pipeline_log "scontrol not found (in a container?): cannot requeue job ${SLURM_JOB_ID:-?}" \
            "myself; exiting with $PIPELINE_EXIT_REQUEUE so that whoever runs this starts it again" \
            "(training resumes from the newest checkpoint in ${OUTPUT_DIR:-the run folder})"
        exit "$PIPELINE_EXIT_REQUEUE"
    fi
    # An array task is named ARRAYID_TASKID: its SLURM_JOB_ID can equal the array's own id, and
    # `scontrol requeue ARRAYID` would requeue (and kill) every task of the array.
    local id=$SLURM_JOB_ID
    [[ -n ${SLURM_ARRAY_JOB_ID:-} && -n ${SLURM_ARRAY_TASK_ID:-} ]] && id=${SLURM_ARRAY_JOB_ID}_$SLURM_ARRAY_TASK_ID
    _pipeline_log "requeueing job $id (this was restart ${SLURM_RESTART_COUNT:-0})"
    if scontrol requeue "$id"; then
        exit 0
    fi
    _pipeline_log "scontrol requeue $id failed (submitted with --no-requeue?);" \
        "exiting with $PIPELINE_EXIT_REQUEUE"
    exit "$PIPELINE_EXIT_REQUEUE"
}

# pipeline_run_per_node "COMMAND STRING"
# One srun task per node runs COMMAND STRING through `bash -c` on that node, so a variable
# escaped in the template (\$SLURM_NODEID) expands there, per node, not in this batch shell.
pipeline_run_per_node() {
    local cmd=$1 rc
    local -a srun_args=(--nodes="$SLURM_NNODES" --ntasks="$SLURM_NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1)
    [[ -n ${SLURM_CPUS_PER_TASK:-} ]] && srun_args+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
    command -v srun >/dev/null 2>&1 || _pipeline_die "srun not found: submit this script with sbatch"

    if [[ -n $_PIPELINE_GOT_USR1 ]]; then
        _pipeline_log "got USR1 before training started"
        pipeline_requeue
    fi
    [[ -n $_PIPELINE_GOT_TERM ]] && _pipeline_die "got TERM before training started"

    _pipeline_log "per node: $(tr -s ' ' <<<"$cmd")"
    # shellcheck disable=SC2086
    srun "${srun_args[@]}" ${SRUN_EXTRA_ARGS:-} \
        bash -c "source $(printf '%q' "$PIPELINE_COMMON") && pipeline_node_exec $cmd" &
    _PIPELINE_STEP_PID=$!
    _pipeline_wait "$_PIPELINE_STEP_PID"
    rc=$?
    _PIPELINE_STEP_PID=
    if [[ -n $_PIPELINE_REPEAT_PID ]]; then
        kill "$_PIPELINE_REPEAT_PID" 2>/dev/null
        wait "$_PIPELINE_REPEAT_PID" 2>/dev/null
        _PIPELINE_REPEAT_PID=
    fi

    if ((rc != 0)); then
        if [[ -n $_PIPELINE_GOT_USR1 ]] || { ((rc == PIPELINE_EXIT_REQUEUE)) && [[ -z $_PIPELINE_GOT_TERM ]]; }; then
            _pipeline_log "training stopped for a requeue (status $rc)"
            pipeline_requeue
        fi
        if [[ -n $_PIPELINE_GOT_TERM ]]; then
            _pipeline_log "job ends (scancel, time limit or preemption): not requeueing;" \
                "submit it again to resume from the newest checkpoint in $OUTPUT_DIR"
        fi
    fi
    trap - USR1 TERM
    _pipeline_log "done with status $rc"
    exit "$rc"
}

# pipeline_node_exec LAUNCHER ARGS...   (runs inside srun's bash -c, on each node)
# Starts the launcher with USR1 ignored (it would die of it; SLURM signals every process of the
# step, so the training processes get USR1 directly) and keeps this shell alive on USR1/TERM.
# A non-zero exit after USR1 becomes 75: launchers hide the training's own status (they exit 1).
# Not after TERM alone: srun also sends TERM to the other nodes when one node's task fails.
# PIPELINE_DRY_RUN=1 prints the command instead of running it (for tests and for checking).
pipeline_node_exec() {
    local node="node=${SLURMD_NODENAME:-$(hostname)} node_id=${SLURM_NODEID:-0}"
    if [[ ${PIPELINE_DRY_RUN:-0} == 1 ]]; then
        echo "[pipeline-slurm] dry-run $node: $*"
        return 0
    fi
    local got_usr1='' rc pid
    trap 'got_usr1=1' USR1
    trap ':' TERM
    (
        trap '' USR1
        trap - TERM
        exec "$@"
    ) &
    pid=$!
    _pipeline_wait "$pid"
    rc=$?
    if ((rc != 0 && rc != PIPELINE_EXIT_REQUEUE)) && [[ -n $got_usr1 ]]; then
        _pipeline_log "$node: launcher exited with $rc after SIGUSR1: reporting $PIPELINE_EXIT_REQUEUE"
        rc=$PIPELINE_EXIT_REQUEUE
    fi
    return "$rc"
}
