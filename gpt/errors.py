"""User-facing errors.

A `GptError` is a mistake the user can fix (bad config, missing file, corrupt shard). Entry points
print its message as one line and exit non-zero, without a traceback; anything else is a bug and
keeps its traceback.
"""


class GptError(Exception):
    """An error whose message names the file/line/key and the fix."""

    every_rank = False
    """True for errors every rank raises alike: only rank 0 prints them."""


class ConfigError(GptError):
    """The resolved configuration is impossible; raised before any process group starts."""

    every_rank = True


class RunDirError(GptError):
    """run.dir cannot be used: another live job holds its lock, or it is not writable (all ranks raise it)."""

    every_rank = True


class DataError(GptError):
    """Input text, token shards or their metadata are missing, malformed or corrupt."""


class CheckpointError(GptError):
    """A checkpoint is missing, incomplete, corrupt or incompatible with the config."""


class TrainingError(GptError):
    """Training cannot go on (e.g. the loss stayed non-finite); the last good state was saved first."""
