"""What the training loop carries from step to step and across restarts (saved in checkpoints)."""

from dataclasses import asdict, dataclass, fields
from typing import Optional


@dataclass
class TrainerState:
    step: int = 0
    """Optimizer steps taken (the next step is step + 1)."""
    consumed_samples: int = 0
    """Global samples consumed: the data position; resume continues with the very next sample."""
    skipped_steps: int = 0
    """Steps whose update was not applied (non-finite loss / fp16 overflow), in total."""
    bad_steps_in_row: int = 0
    """Consecutive non-finite losses up to now."""
    best_val_loss: Optional[float] = None
    """Lowest validation loss seen."""
    best_step: Optional[int] = None
    """The step of best_val_loss."""
    evals_without_improvement: int = 0
    """For early stopping."""
    wandb_id: Optional[str] = None
    """The W&B run this run logs to, so a resume continues it."""
    data: Optional[dict] = None
    """Fingerprints of the token shards trained on ({"train": [{path, sha256}], "val": ...}, from their
    metadata.json): a resume on other data is refused unless data.allow_changed=true."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainerState":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
