"""gpt's Hydra launcher plugin for sweeps (see gpt_trials.py)."""
