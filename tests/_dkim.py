"""DKIM signing keys for tests, made from key file content as ``txmail dkim keygen`` writes it."""

from __future__ import annotations

import tempfile

from txmail.policy import dkim

__all__ = ["load_key"]


def load_key(domain: str, selector: str, content: bytes) -> dkim.SigningKey:
    """A :class:`~txmail.policy.dkim.SigningKey` for *domain* and *selector* from key file *content*."""
    with tempfile.NamedTemporaryFile(suffix=".key") as f:
        f.write(content)
        f.flush()
        return dkim.load_signing_key(f.name, domain, selector)
