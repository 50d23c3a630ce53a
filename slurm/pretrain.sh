#!/bin/bash
# slurm/pretrain.sh - train a GPT on a SLURM cluster. Copy it, edit the #SBATCH lines, submit:
#
#   sbatch slurm/pretrain.sh model=gpt2-350m parallel.tensor=2 data.path=/shared/owt run.dir=/shared/runs/350m
#
# The arguments are Hydra overrides, given to every rank unchanged (as to `gpt-pretrain`). One task
# per node runs the launcher (python -m launcher), which starts one rank per GPU with torchrun;
# rank 0 lives on the first node of the allocation. Impossible layouts are refused before any node
# starts. run.dir and the data must be on a filesystem every node sees.
#
# Resume: submitting the same command again, or a requeue, continues from run.dir's latest checkpoint.
# Time limit: --signal=B:USR1@300 makes SLURM send SIGUSR1 to this script ~5 minutes (SLURM checks
#   once a minute) before the limit; it forwards the signal to the ranks, which finish their step,
#   save and exit; then the script requeues the job and the next attempt resumes from that step.
#   Leave enough time for one step plus a checkpoint save.
# Preemption / node failure: SLURM sends SIGTERM to every process (the ranks save if the grace time
#   allows) and, with --requeue, starts the job again; it resumes from the latest checkpoint.
# Logs: run.dir/logs/slurm-<jobid>.out, every attempt of the job appended ("0:" / "1:" = node of the
#   line). The --output file below only names that log, plus errors from before run.dir was known.
# Check a command without a GPU: `python -m launcher --dry-run --nnodes 4 --nproc-per-node 8
#   --master-addr x pretrain <overrides>` prints the layout and the exact torchrun command.

# ---- edit these ---------------------------------------------------------------------------
#SBATCH --job-name=gpt-pretrain
#SBATCH --nodes=4
#SBATCH --gpus-per-node=8
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --partition=gpu
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%j.out
# --nodes             nodes; ranks = nodes x GPUs per node (tensor x pipeline x data parallel)
# --gpus-per-node     one rank per GPU (on CPU-only nodes set GPT_NPROC_PER_NODE instead)
# --ntasks-per-node   keep 1: the launcher starts the node's ranks itself
# --cpus-per-task     CPUs shared by the node's ranks and their data loading: most of the node
# --signal            B: = to this script, which forwards it to the ranks and then requeues
# --requeue           the job may run again (after the time-limit save, a preemption, a node failure)
# --open-mode=append  a requeued job appends to its log files instead of truncating them
# -------------------------------------------------------------------------------------------

set -euo pipefail

# SIGUSR1 before the time limit: pass it on (srun forwards it to every process of the step; torchrun
# ignores it, the ranks save and exit), then requeue at the end.
stop_requested=0 srun_pid=''
forward_stop() {
    stop_requested=$((stop_requested + 1))
    echo "==== SIGUSR1 (time limit near): asking the ranks to save and exit"
    if [[ -n $srun_pid ]]; then kill -USR1 "$srun_pid" 2>/dev/null || true; fi
}
trap forward_stop USR1

# The environment: sbatch passes on your shell's (activate the venv before submitting), or set it up
# here, e.g.  source /path/to/gpt/.venv/bin/activate   (or: module load ...; conda activate ...)
PYTHON=${GPT_PYTHON:-python}
COMMAND=${GPT_COMMAND:-pretrain}   # the gpt.<command> the ranks run

# NCCL. torch's default TORCH_NCCL_ASYNC_ERROR_HANDLING=3 ends a rank whose collective exceeds the
# process-group timeout (30 min, gpt/parallel/context.py), so a hung node fails the job instead of
# idling until the time limit; srun --kill-on-bad-exit then stops the other nodes at once.
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}     # INFO prints the interfaces/transports chosen at start
# export NCCL_SOCKET_IFNAME=ib0           # if NCCL's bootstrap picks an interface nodes cannot reach
# export NCCL_IB_HCA=mlx5                 # restrict NCCL to these InfiniBand adapters
# export TORCH_NCCL_DUMP_ON_TIMEOUT=1 TORCH_NCCL_TRACE_BUFFER_SIZE=2000   # who hung, on timeout
export PYTHONUNBUFFERED=1

# Rendezvous: node 0 (this batch script runs on it) hosts torchrun's static store on a free port.
# The other nodes wait up to GPT_RENDEZVOUS_TIMEOUT seconds (default 300) for it, then fail with one line.
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
MASTER_PORT=${MASTER_PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')}
export MASTER_ADDR MASTER_PORT

# Validate the config for this allocation and find run.dir (one line and exit 2 if impossible).
RUN_DIR=$("$PYTHON" -m launcher --print-run-dir "$COMMAND" "$@")
mkdir -p "$RUN_DIR/logs"
LOG=$RUN_DIR/logs/slurm-$SLURM_JOB_ID.out
echo "job $SLURM_JOB_ID (attempt $((${SLURM_RESTART_COUNT:-0} + 1))): log in $LOG"
exec >> "$LOG" 2>&1
echo "==== job $SLURM_JOB_ID attempt $((${SLURM_RESTART_COUNT:-0} + 1)) on $SLURM_JOB_NODELIST at $(date -Is)"
echo "==== $COMMAND $*  (rank 0 at $MASTER_ADDR:$MASTER_PORT)"

if [[ $stop_requested -gt 0 ]]; then  # the time limit is nearer than --signal's lead time
    echo "==== SIGUSR1 before the ranks started: give the job more --time than the --signal lead time"
    exit 1
fi
srun --ntasks-per-node=1 --nodes="$SLURM_JOB_NUM_NODES" --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" \
     --kill-on-bad-exit=1 --label \
     "$PYTHON" -m launcher "$COMMAND" "$@" &
srun_pid=$!
# A trapped signal makes `wait` return early (status > 128); bash keeps srun's status for the next wait.
rc=''
while [[ -z $rc ]]; do
    seen=$stop_requested
    wait "$srun_pid" && status=0 || status=$?
    if [[ $status -gt 128 && $seen != "$stop_requested" ]]; then continue; fi
    rc=$status
done
echo "==== srun exited with $rc at $(date -Is)"

if [[ $stop_requested -gt 0 && $rc == 0 ]]; then
    echo "==== saved; requeueing job $SLURM_JOB_ID to resume from the checkpoint"
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
