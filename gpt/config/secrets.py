"""Keep secrets from the environment out of everything a run writes (checkpoints, config.yaml, W&B).

A resolved config can carry a secret without anyone meaning it to: `${oc.env:WANDB_API_KEY}` in a
yaml file, a token pasted into a key. We do not guess by key name (`eod_token` is not a secret);
we replace every occurrence of the *value* of a secret-looking environment variable.
"""

import os
import re

REDACTED = "<redacted>"
# Environment variable names whose values are treated as secrets.
SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH)", re.IGNORECASE)
_MIN_LEN = 8  # shorter values ("1", "true") would redact ordinary text


def secret_values(environ=None) -> list[str]:
    environ = os.environ if environ is None else environ
    values = {v for k, v in environ.items() if SECRET_NAME.search(k) and len(v) >= _MIN_LEN}
    return sorted(values, key=len, reverse=True)  # longest first: a secret containing another


def redact(obj, secrets: list[str] | None = None):
    """A copy of a JSON-like object (dicts, lists, strings) with every secret value replaced."""
    secrets = secret_values() if secrets is None else secrets
    if not secrets:
        return obj
    if isinstance(obj, str):
        for s in secrets:
            obj = obj.replace(s, REDACTED)
        return obj
    if isinstance(obj, dict):
        return {redact(k, secrets): redact(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v, secrets) for v in obj)
    return obj
