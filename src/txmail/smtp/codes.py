"""
SMTP replies, named once (RFC 5321 section 4.2, enhanced codes RFC 3463).

Every reply the server sends is a :class:`Reply` constant from this module
(or built with :meth:`Reply.with_text` from one), so the codes can be read
and checked in one place, as mox's ``smtp/codes.go`` and aiosmtpd's
``statuscodes`` do.  Enhanced status codes (RFC 2034, RFC 3463) are sent on
every reply except the greeting and EHLO/HELO, as RFC 2034 section 3 asks.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "ADDRESS_LITERAL_NOT_ACCEPTED",
    "ALREADY_AUTHENTICATED",
    "ALREADY_TLS",
    "AUTH_BAD_BASE64",
    "AUTH_CANCELLED",
    "AUTH_ENCRYPTION_REQUIRED",
    "AUTH_FAILED",
    "AUTH_NOT_AVAILABLE",
    "AUTH_REQUIRED",
    "AUTH_SUCCEEDED",
    "AUTH_TEMPORARY_FAILURE",
    "AUTH_UNKNOWN_MECHANISM",
    "BAD_RECIPIENT_SYNTAX",
    "BAD_SENDER_SYNTAX",
    "BAD_SEQUENCE",
    "BARE_LINE_ENDING",
    "BDAT_SYNTAX_CLOSING",
    "BDAT_TRANSACTION_FAILED",
    "BODY_NOT_SUPPORTED",
    "BYE",
    "EXPN_NOT_AVAILABLE",
    "HELP",
    "LINE_TOO_LONG",
    "LOCAL_ERROR",
    "MESSAGE_TOO_BIG",
    "NEED_HELO",
    "NESTED_MAIL",
    "NOT_IMPLEMENTED",
    "NO_VALID_RECIPIENTS",
    "OK",
    "PARAM_NOT_RECOGNIZED",
    "PARAM_SYNTAX_ERROR",
    "READY_TO_START_TLS",
    "RECIPIENT_OK",
    "ROUTING_NOT_ACCEPTED",
    "SENDER_OK",
    "SHUTTING_DOWN",
    "SMTPUTF8_REQUIRED",
    "START_MAIL_INPUT",
    "SYNTAX_ERROR",
    "TIMEOUT",
    "TLS_NOT_AVAILABLE",
    "TOO_MANY_ERRORS",
    "TOO_MANY_RECIPIENTS",
    "TRANSACTION_FAILED",
    "VRFY_CANNOT_VERIFY",
    "Reply",
]

_REPLY_RE = re.compile(r"^([2-5][0-9][0-9])(?:[ -]([245]\.[0-9]{1,3}\.[0-9]{1,3}))?(?: (.*))?$")


@dataclass(frozen=True, slots=True)
class Reply:
    """
    One SMTP reply.

    Attributes:
        code: the three-digit reply code (RFC 5321 section 4.2).
        enhanced: the enhanced status code (``"2.1.0"``), or ``""`` for
            replies that carry none (the greeting, EHLO).
        text: the text; several lines for a multi-line reply (``\\n``
            separates them).  Never exception text.
    """

    code: int
    enhanced: str
    text: str

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"bad reply code {self.code}")
        if any(c in self.text for c in "\r\x00"):
            raise ValueError("reply text contains CR or NUL")

    @property
    def is_positive(self) -> bool:
        """A 2xx or 3xx reply."""
        return self.code < 400

    @property
    def is_temporary(self) -> bool:
        """A 4xx reply."""
        return 400 <= self.code < 500

    def with_text(self, text: str) -> Reply:
        """This reply's codes with other text."""
        return Reply(self.code, self.enhanced, text)

    def to_bytes(self) -> bytes:
        """
        Serialise as one or more reply lines (RFC 5321 section 4.2.1).

        Every line but the last has ``-`` after the code; the enhanced code
        is repeated on each line (RFC 2034 section 3).
        """
        lines = self.text.split("\n")
        out = []
        for i, line in enumerate(lines):
            sep = "-" if i < len(lines) - 1 else " "
            words = " ".join(w for w in (self.enhanced, line) if w)
            # "334 " with an empty challenge keeps its space (RFC 4954 section 4 examples).
            out.append(f"{self.code}{sep}{words}\r\n")
        return "".join(out).encode("utf-8")

    def as_text(self) -> str:
        """
        The reply on one line, ``"550 5.1.1 No such user"`` (the lines of a
        multi-line reply joined with spaces): for logs, stored states and
        JSON, never for the wire (:meth:`to_bytes`).
        """
        return " ".join(w for w in (str(self.code), self.enhanced, self.text.replace("\n", " ")) if w)

    @classmethod
    def from_text(cls, text: str) -> Reply | None:
        """
        Parse a reply written as text (``"550 5.1.1 No such user"``, what a
        plug-in gives): ``None`` when *text* is not a well-formed
        single-line reply.  An enhanced code of another class than the
        reply's is dropped (RFC 3463 section 2).
        """
        m = _REPLY_RE.match(text.strip()) if "\n" not in text.strip() else None
        if m is None:
            return None
        code = int(m.group(1))
        enhanced = m.group(2) or ""
        if enhanced and enhanced[0] != m.group(1)[0]:
            # RFC 3463 section 2: the class of the enhanced code matches the reply's.
            enhanced = ""
        return cls(code, enhanced, m.group(3) or "")

    @classmethod
    def parse(cls, text: str, default: Reply) -> Reply:
        """
        :meth:`from_text`, or *default* when *text* is not a well-formed
        single-line reply, so a bad string from a plug-in never reaches the
        wire.
        """
        reply = cls.from_text(text)
        return default if reply is None else reply


# 2xx and 3xx
OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
START_MAIL_INPUT = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
BYE = Reply(221, "2.0.0", "Bye")
HELP = Reply(214, "2.0.0", "See https://www.rfc-editor.org/rfc/rfc5321")
#: RFC 5321 section 3.5.3: 252 when the server will not verify; no user enumeration.
VRFY_CANNOT_VERIFY = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
READY_TO_START_TLS = Reply(220, "2.0.0", "Ready to start TLS")
AUTH_SUCCEEDED = Reply(235, "2.7.0", "Authentication successful")

# 5xx syntax and sequence
SYNTAX_ERROR = Reply(500, "5.5.2", "Syntax error, command unrecognized")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
PARAM_SYNTAX_ERROR = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
EXPN_NOT_AVAILABLE = Reply(502, "5.5.1", "EXPN not available")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
NEED_HELO = Reply(503, "5.5.1", "Send EHLO or HELO first")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already specified")
#: RFC 5321 section 3.3: DATA without an accepted RCPT may get 503 or 554.
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")
PARAM_NOT_RECOGNIZED = Reply(555, "5.5.4", "MAIL FROM/RCPT TO parameters not recognized or not implemented")
BODY_NOT_SUPPORTED = Reply(555, "5.5.4", "BODY type not supported")
#: RFC 6531 section 3.6.2 suggests 553 5.6.7 for a non-ASCII address without SMTPUTF8.
SMTPUTF8_REQUIRED = Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")

# Limits and policy
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
#: RFC 5321 section 4.5.3.1.10: 452 for recipients beyond the limit.
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
ROUTING_NOT_ACCEPTED = Reply(553, "5.7.1", "Sender-specified routing is not accepted")
ADDRESS_LITERAL_NOT_ACCEPTED = Reply(553, "5.7.1", "Address literals are not accepted as recipients")
#: RFC 5321 section 2.3.8: bare CR and LF MUST NOT be sent; see dotstuff.py.
BARE_LINE_ENDING = Reply(550, "5.6.0", "Message contains bare CR or LF; lines must end with CRLF")
#: RFC 3030 section 3: once a BDAT chunk failed, the following chunks are refused.
BDAT_TRANSACTION_FAILED = Reply(554, "5.5.0", "Transaction failed earlier; chunk discarded")

# STARTTLS (RFC 3207)
TLS_NOT_AVAILABLE = Reply(454, "4.7.0", "TLS not available")
ALREADY_TLS = Reply(503, "5.5.1", "TLS already active")

# AUTH (RFC 4954 section 6)
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Already authenticated")
AUTH_NOT_AVAILABLE = Reply(503, "5.5.1", "AUTH not available")
AUTH_UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type")
AUTH_ENCRYPTION_REQUIRED = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_CANCELLED = Reply(501, "5.0.0", "Authentication cancelled")
AUTH_BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode response")
AUTH_TEMPORARY_FAILURE = Reply(454, "4.7.0", "Temporary authentication failure")

# Local trouble and closing
LOCAL_ERROR = Reply(451, "4.3.0", "Requested action aborted: local error in processing")
TRANSACTION_FAILED = Reply(554, "5.0.0", "Transaction failed")
TIMEOUT = Reply(421, "4.4.2", "Timeout, closing connection")
#: RFC 5321 section 3.8; RFC 3463 4.3.2 "System not accepting network messages".
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, closing connection")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
#: A BDAT whose size cannot be read loses the chunk boundary; nothing after
#: it can be trusted to be a command (RFC 3030 section 3), so we close.
BDAT_SYNTAX_CLOSING = Reply(421, "4.5.2", "Malformed BDAT, closing connection")
