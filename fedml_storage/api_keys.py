"""API keys: the form `ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]`, checked without ever echoing a key."""

from __future__ import annotations

import re
from typing import Any

_API_KEY_RE = re.compile(r"^[\x21-\x39\x3b-\x7e]+(:[\x21-\x39\x3b-\x7e]+){1,2}$")  # printable ASCII parts
_AWS_KEY_ID = re.compile(r"(AKIA|ASIA)[A-Z0-9]{12,124}")  # long-term and temporary AWS access key ids
API_KEY_FORM = "ACCESS_KEY_ID:SECRET_ACCESS_KEY (or ACCESS_KEY_ID:SECRET_ACCESS_KEY:SESSION_TOKEN)"
# a key pair as a key passed in the wrong argument would be: AWS's (AKIA.../ASIA... and 16 more, a 40-character
# secret), or an id of another provider's shape (GCS HMAC's GOOG1..., DigitalOcean's DO00...) or of 32 hex digits (R2,
# IBM COS) or 25 (Backblaze B2), then a secret of 20 or more base64 characters. Only these shapes: names such as
# 'COCO2017TRAIN:FasterRCNN...' or 'ASIA2023CENSUSDATA01:populationbyprovince' must stay names
_KEY_PAIR = re.compile(r"(?<![0-9A-Za-z])(?:(?:AKIA|ASIA)[A-Z0-9]{16}:[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
                       r"|(?:(?:GOOG1|DO00)[A-Z0-9]{12,124}|[0-9a-f]{32}|[0-9a-f]{25}):[A-Za-z0-9/+=]{20,})"
                       r"(?::[A-Za-z0-9/+=]+)?")


def check_api_key(raw: Any) -> str:
    """The key without surrounding whitespace; ValueError (never echoing the key) unless `raw` is written as an API
    key."""
    if raw is None:
        raise ValueError(f"no api_key given: pass the store's key pair, written {API_KEY_FORM}")
    if not isinstance(raw, str):
        raise ValueError(f"api_key must be a string written {API_KEY_FORM}")
    key = raw.strip()
    if len(key) > 1 and key[0] == key[-1] and key[0] in "'\"":
        raise ValueError("api_key is wrapped in quotes; give it without them")
    if any(p.startswith("<") and p.endswith(">") or p.endswith("...") for p in key.split(":")):
        raise ValueError("api_key is a placeholder from an example (<...> or ...); put in the store's own key pair")
    if _API_KEY_RE.match(key):
        key_id, secret = key.split(":")[:2]
        # (MinIO and Ceph key ids are the user's choice: a '/' or '+' there proves nothing)
        if _AWS_KEY_ID.fullmatch(secret) and not _AWS_KEY_ID.fullmatch(key_id):
            raise ValueError(f"api_key looks written the wrong way round (its second part is shaped like an AWS "
                             f"access key id, AKIA... or ASIA...): write it {API_KEY_FORM}")
        return key
    parts = key.split(":")
    if len(parts) < 2:
        raise ValueError(f"api_key has no ':'; write it {API_KEY_FORM}. A FedML platform API key is not a storage "
                         "credential: use the store's key pair (for R2, an API token's Access Key ID and Secret "
                         "Access Key)")
    if len(parts) > 3:
        raise ValueError(f"api_key has {len(parts)} parts separated by ':'; write it {API_KEY_FORM}")
    for part, what in zip(parts, ("ACCESS_KEY_ID", "SECRET_ACCESS_KEY", "SESSION_TOKEN")):
        if not part:
            raise ValueError(f"the {what} part of api_key is empty; write it {API_KEY_FORM}")
    raise ValueError(f"api_key must be written {API_KEY_FORM}, each part printable ASCII without spaces (a "
                     "pasted key may carry invisible characters: type it again)")


def looks_like_key(value: Any) -> bool:
    """Whether `value` is shaped like an AWS or R2 key pair: text never to echo, nor to keep as a name or a path."""
    return isinstance(value, str) and bool(_KEY_PAIR.fullmatch(value.strip()))


def mask_keys(text: str) -> str:
    """`text` with whatever is shaped like an AWS or R2 key pair masked (a key given where a name or path goes)."""
    return _KEY_PAIR.sub("<a value shaped like an API key>", text)
