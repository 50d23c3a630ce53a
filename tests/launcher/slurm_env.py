"""Environments SLURM gives a launcher, for the unit tests of this directory."""


def slurm_step(nodes: int, node_id: int, job: str = "4242", nodelist: str = "gpu-a[01-04]", **extra) -> dict:
    """What `srun --ntasks-per-node=1` puts in each task's environment (the variables we read)."""
    return {"SLURM_JOB_ID": job, "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_NNODES": str(nodes),
            "SLURM_JOB_NODELIST": nodelist, "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_NODES": str(nodes),
            "SLURM_STEP_NUM_TASKS": str(nodes), "SLURM_STEP_NODELIST": nodelist, "SLURM_NODEID": str(node_id),
            "SLURM_PROCID": str(node_id), **extra}
