"""
Policy: the checks an SMTP server makes on the way in and the
authentication it adds on the way out (SPF, DKIM, DMARC, ARC, SRS, reverse
DNS, blocklists, rate limits, greylisting), and the hooks they are built on.

The hook API (:mod:`txmail.policy.hooks`) is importable from here::

    from txmail.policy import Policy, Verdict
"""

from txmail.policy.hooks import (
    MessageInfo,
    Policy,
    RecipientInfo,
    SessionInfo,
    Stage,
    TransactionInfo,
    Verdict,
)

__all__ = ["MessageInfo", "Policy", "RecipientInfo", "SessionInfo", "Stage", "TransactionInfo", "Verdict"]
