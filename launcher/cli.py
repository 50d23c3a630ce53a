"""`python -m launcher` / `gpt-launch`: parse the command line, plan, print or run. Thin on purpose."""

import argparse
import os
import shlex
import sys
from typing import List, Optional

from gpt.errors import GptError
from launcher import rendezvous, supervise
from launcher.environment import Pinned, Placement, detect
from launcher.plan import LaunchPlan, child_env, commands, make_plan

PROG = "gpt-launch"
DESCRIPTION = """\
Starts `torchrun ... -m gpt.<command> <overrides>` for this node: on one box (nothing to set), in a
SLURM job (one `srun` task per node; see slurm/pretrain.sh) or in a container (torchrun's PET_NNODES,
PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT). The config is validated for the derived number of
processes before anything starts. SIGUSR1/SIGTERM (or Ctrl-C) make the ranks save and exit."""
EPILOG = """\
examples:
  python -m launcher pretrain model=gpt2-124m data.path=data/owt run.dir=runs/124m
  python -m launcher --dry-run pretrain parallel.tensor=2      # print the layout and the command
  GPT_NPROC_PER_NODE=4 python -m launcher pretrain device=cpu  # 4 CPU ranks
  sbatch slurm/pretrain.sh model=gpt2-350m parallel.tensor=2"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + traceback-like noise
        raise GptError(f"{message} (see {PROG} --help)")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="print the derived layout and the exact command, then exit")
    p.add_argument("--print-run-dir", action="store_true",
                   help="validate, print the absolute run.dir and exit (the SLURM script puts its log there)")
    p.add_argument("--nproc-per-node", type=int, metavar="N",
                   help="processes on this node (default: GPT_NPROC_PER_NODE, else one per GPU, else 1)")
    p.add_argument("--nnodes", type=int, metavar="N", help="nodes in the job (default: from SLURM/PET_NNODES, else 1)")
    p.add_argument("--node-rank", type=int, metavar="R", help="this node's rank (default: SLURM_NODEID/PET_NODE_RANK)")
    p.add_argument("--master-addr", metavar="HOST", help="node 0's host (default: MASTER_ADDR, the first SLURM node)")
    p.add_argument("--master-port", type=int, metavar="PORT",
                   help="node 0's rendezvous port (default: MASTER_PORT, else derived from the SLURM job id, else 29500)")
    p.add_argument("command", help="gpt.<command> to start: " + "|".join(commands()))
    p.add_argument("overrides", nargs="*", help="Hydra overrides key=value, passed to the ranks unchanged")
    return p


def main(argv: Optional[List[str]] = None) -> None:
    sys.exit(launch(sys.argv[1:] if argv is None else argv))


def launch(argv: List[str]) -> int:
    try:
        args = parser().parse_intermixed_args(argv)
        pinned = Pinned(nproc_per_node=args.nproc_per_node, nnodes=args.nnodes, node_rank=args.node_rank,
                        master_addr=args.master_addr, master_port=args.master_port)
        placement = detect(os.environ, pinned)
        seconds = rendezvous.timeout_s(os.environ)
        plan = make_plan(args.command, args.overrides, placement, rendezvous_timeout=seconds)
        if args.print_run_dir:
            print(plan.run_dir)
            return 0
        if args.dry_run:
            print(describe(plan))
            return 0
        _refuse_partial_slurm_start(placement)
        rendezvous.check(placement, os.environ, supervise.say)  # bounded: a node 0 we cannot reach fails here
    except GptError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
        return 2
    supervise.say(f"{where(placement)}; starting: {shlex.join(plan.argv)}")
    rc = supervise.run(plan.argv, child_env(os.environ), under_slurm=placement.source == "slurm", direct=plan.direct,
                       rendezvous_timeout=None if placement.standalone else seconds)
    if rc == supervise.NO_RANKS:
        print(f"{PROG}: error: {rendezvous.failed_before_ranks(placement, seconds)}", file=sys.stderr, flush=True)
        return 2
    return rc


def where(p: Placement) -> str:
    job = f"SLURM job {p.job_id}, " if p.source == "slurm" else ("torchrun env, " if p.source == "torchrun env" else "")
    return (f"{job}node {p.node_rank} of {p.nnodes}, {p.nproc_per_node} process(es) per node "
            f"[{p.nproc_from}] -> {p.world} rank(s)")


def describe(plan: LaunchPlan) -> str:
    p = plan.placement
    if plan.direct:
        rendezvous = "none (one process: started directly, without torchrun)"
    elif p.standalone:
        rendezvous = "standalone (one node; torchrun picks a free local port)"
    else:
        rendezvous = f"static, node 0 at {p.master_addr}:{p.master_port}; this is node_rank {p.node_rank}"
    lines = [f"where:      {p.source}: {where(p)}",
             f"rendezvous: {rendezvous}",
             f"layout:     {plan.layout.describe()}",
             f"run dir:    {plan.run_dir}",
             f"command:    {shlex.join(plan.argv)}"]
    if p.nnodes > 1:
        lines.append(f"            (nodes 0..{p.nnodes - 1} each run this command with their own --node_rank)")
    return "\n".join(lines)


def _refuse_partial_slurm_start(p: Placement) -> None:
    if p.source == "slurm" and p.nnodes > 1 and not p.slurm_step:
        raise GptError(f"this SLURM job has {p.nnodes} nodes but the launcher runs in the batch shell, on one of "
                       f"them: start it with `srun --ntasks-per-node=1 python -m launcher ...` (as slurm/pretrain.sh does)")
