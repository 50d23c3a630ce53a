"""Keep secrets from the environment out of everything a run writes or prints (checkpoints, config.yaml,
W&B, `--cfg`).

A resolved config can carry a secret without anyone meaning it to: `${oc.env:WANDB_API_KEY}` in a
yaml file or an override, a token pasted into a key. We do not guess by config key (`eod_token` is
not a secret); we replace every occurrence of the *value* of a secret-looking environment variable:
- values interpolated into the config from such a variable, whatever their length (`mask`, called by
  the loader for every `${oc.env:NAME}` it resolves), like a CI system's masked variables;
- any other such value of 8 characters or more (shorter ones, "1", "true", would redact ordinary text
  they merely happen to occur in).
"""

import os
import re

REDACTED = "<redacted>"
# Environment variable names whose values are treated as secrets.
SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH)", re.IGNORECASE)
_MIN_LEN = 8
_ENV_REFERENCE = re.compile(r"oc\.env:\s*['\"]?([A-Za-z_][A-Za-z0-9_]*)")
_masked: set[str] = set()  # values this process interpolated from secret variables


def mask(value: str) -> None:
    """Redact `value` from now on, whatever its length."""
    if value:
        _masked.add(value)


def mask_interpolated(raw, environ=None) -> None:
    """Mask the value of every secret-looking variable that an unresolved config (plain containers,
    strings with `${...}`) interpolates with oc.env."""
    environ = os.environ if environ is None else environ
    if isinstance(raw, str):
        for name in _ENV_REFERENCE.findall(raw):
            if SECRET_NAME.search(name) and environ.get(name):
                mask(environ[name])
    elif isinstance(raw, dict):
        for v in raw.values():
            mask_interpolated(v, environ)
    elif isinstance(raw, (list, tuple)):
        for v in raw:
            mask_interpolated(v, environ)


def secret_values(environ=None) -> list[str]:
    environ = os.environ if environ is None else environ
    values = {v for k, v in environ.items() if SECRET_NAME.search(k) and len(v) >= _MIN_LEN} | _masked
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
