"""
Building the RFC 5322 message of an ``Email/set`` create (RFC 8621 section 4.6).
"""

from __future__ import annotations

from typing import Any

from txmail.jmap.core import CallContext, set_error
from txmail.jmap.state import MailView

__all__ = ["create_email"]


async def create_email(context: CallContext, view: MailView, props: dict[str, Any]) -> dict[str, Any]:
    return set_error("forbidden", "not yet")
