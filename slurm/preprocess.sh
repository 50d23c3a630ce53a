#!/bin/bash
# slurm/preprocess.sh - tokenise a corpus on many nodes with a SLURM job array. Copy it, edit the
# #SBATCH lines, submit:
#
#   sbatch slurm/preprocess.sh input='/shared/fineweb/**/*.parquet' output=/shared/data/fineweb \
#          tokenizer.kind=hf tokenizer.path=/shared/tok/tokenizer.json tasks=64
#
# The arguments are gpt-preprocess's (Hydra overrides), plus `tasks=N` (default 4): the array size.
#
# Submitted like this (no --array) the job is the driver: with tokenizer.kind=bpe it first trains the
# tokenizer on a sample of the input (stage=tokenizer, tokenizer.train_bytes), then it submits this
# script again as an array of N tasks (with the driver's partition, CPUs and time limit) and ends. Array task i writes slice i of the input's units
# (stage=encode) into <output>.parts/; the task that finishes the last unit merges everything into
# <output>: one shard set and one metadata.json, byte-identical to a one-process gpt-preprocess run.
# `sbatch --array=0-63 slurm/preprocess.sh ...` skips the driver (then a bpe tokenizer must exist:
# run the driver, or gpt-preprocess stage=tokenizer, first).
#
# A task that failed (node lost, time limit, out of memory): re-run it alone once the array has
# ended, with the same arguments:   sbatch --array=<its id> slurm/preprocess.sh <same arguments>
# It writes every unit still missing (finished units are kept) and then merges. Until then
# `gpt-preprocess stage=merge <same arguments>` refuses with one line naming the missing unit and
# its slice. Logs: slurm-<job>.out for the driver, slurm-<array job>_<task>.out for the tasks.
#
# input, output and the tokenizer must be on a filesystem every node sees.

# ---- edit these ---------------------------------------------------------------------------
#SBATCH --job-name=gpt-preprocess
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=16
#SBATCH --time=12:00:00
#SBATCH --partition=cpu
#SBATCH --output=slurm-%A_%a.out
# --nodes / --ntasks  keep 1 per array task: a task is one gpt-preprocess process with `workers`
# --cpus-per-task     workers (processes) per task; the default workers= is this number
# --output            %A_%a = array job and task id (the driver's log is slurm-<job>_4294967294.out)
# -------------------------------------------------------------------------------------------

set -euo pipefail

PYTHON=${GPT_PYTHON:-python}   # activate the venv before submitting (sbatch passes your shell's environment)
export PYTHONUNBUFFERED=1

# Split off what this script decides: tasks= (array size), and task=/stage= that it sets itself.
tasks=${GPT_PREPROCESS_TASKS:-4} args=() kind=byte
for a in "$@"; do
    case $a in
        tasks=*) tasks=${a#tasks=} ;;
        task=*|stage=*) echo "slurm/preprocess.sh: drop '$a': the script sets stage and task itself" >&2; exit 2 ;;
        tokenizer.kind=*) kind=${a#tokenizer.kind=}; args+=("$a") ;;
        *) args+=("$a") ;;
    esac
done
[[ $tasks =~ ^[1-9][0-9]*$ ]] || { echo "slurm/preprocess.sh: tasks=$tasks must be a positive number" >&2; exit 2; }
workers="workers=${SLURM_CPUS_PER_TASK:-1}"   # before the user's arguments: a workers= of theirs wins

if [[ -z ${SLURM_ARRAY_TASK_ID:-} ]]; then
    # The driver: tokenizer (bpe only), then the array.
    echo "==== driver job ${SLURM_JOB_ID:-?} at $(date -Is): gpt-preprocess ${args[*]} (array of $tasks tasks)"
    if [[ $kind == bpe ]]; then
        "$PYTHON" -m gpt.preprocess "$workers" "${args[@]}" stage=tokenizer
    fi
    # The array gets the driver's partition, CPUs and time limit (given on its sbatch line or above).
    info=$(scontrol -o show job "$SLURM_JOB_ID")
    script=$(grep -oP '\bCommand=\K\S+' <<< "$info" || true)
    [[ -f $script ]] || script=$0   # the submitted path, else the spooled copy of this script
    same=(--job-name="${SLURM_JOB_NAME:-gpt-preprocess}" --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}"
          --partition="$(grep -oP '\bPartition=\K\S+' <<< "$info")" --time="$(grep -oP '\bTimeLimit=\K\S+' <<< "$info")")
    if [[ -n ${SLURM_JOB_ACCOUNT:-} ]]; then same+=(--account="$SLURM_JOB_ACCOUNT"); fi
    sbatch --array="0-$((tasks - 1))" "${same[@]}" "$script" "${args[@]}"
    exit 0
fi

# An array task: its slice of the units, then the merge if every unit is finished.
first=${SLURM_ARRAY_TASK_MIN:-0} last=${SLURM_ARRAY_TASK_MAX:-0}
if [[ $((last - first + 1)) != "${SLURM_ARRAY_TASK_COUNT:-1}" ]]; then
    echo "slurm/preprocess.sh: give --array a contiguous range (e.g. --array=3 or --array=0-63)" >&2
    exit 2
fi
task=$((SLURM_ARRAY_TASK_ID - first)) count=$((last - first + 1))
echo "==== array task ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} (slice $task of $count) on $(hostname) at $(date -Is)"
exec "$PYTHON" -m gpt.preprocess "$workers" "${args[@]}" stage=encode task="$task" tasks="$count"
