"""How ranks get started: one launch path for a laptop, a SLURM cluster and a container.

`python -m launcher [options] <command> [overrides]` reads where it runs (SLURM variables,
torchrun's PET_* variables in a container, or nothing on one box), derives nodes, processes per
node, the rank-0 address and port, refuses layouts the processes cannot hold, and starts
`torchrun ... -m gpt.<command> <overrides>` with the overrides passed through unchanged.

Imports only `gpt.config` and `gpt.errors` from the package and never torch, so `--dry-run` and
the SLURM batch script's checks answer in a fraction of a second.
"""
