"""
txmail: a mail server framework and reference mail server built on Twisted.

SMTP, POP3 and IMAP share one mailbox contract (:mod:`txmail.interfaces`)
and one delivery router; ``twistd mailserver`` wires them into a running
server.
"""

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
