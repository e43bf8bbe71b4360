"""Helpers of the Sieve tests: parse and run a script on a small message in one call."""

from __future__ import annotations

from typing import Any

from txmail.sieve import Context, Envelope, Result, SieveMessage, parse, run

__all__ = ["MESSAGE", "FakeDuplicates", "FakeVacation", "message", "sieve"]

MESSAGE = (
    b"Date: Tue, 1 Apr 1997 09:06:31 -0800 (PST)\r\n"
    b"From: coyote@desert.example.org\r\n"
    b"To: roadrunner@acme.example.com\r\n"
    b"Subject: I have a present for you\r\n"
    b"Message-ID: <1234@desert.example.org>\r\n"
    b"X-Caffeine: C8H10N4O2\r\n"
    b"\r\n"
    b"Look, I'm sorry about the whole anvil thing, and I really\r\n"
    b"didn't mean to try and drop it on you from the top of the\r\n"
    b"cliff.  I want to try to make it up to you.  I've got some\r\n"
    b"great birdseed over here at my place--top of the line\r\n"
    b"stuff--and if you come by, I'll have it all wrapped\r\n"
    b"up for you.  I'm really sorry for all the problems I've\r\n"
    b"caused.  I'm hopeful you'll forgive me.\r\n"
)


def message(data: bytes = MESSAGE) -> SieveMessage:
    return SieveMessage.from_bytes(data)


def sieve(
    script: str,
    data: bytes = MESSAGE,
    *,
    mail_from: str = "coyote@desert.example.org",
    rcpt_to: str = "roadrunner@acme.example.com",
    context: Context | None = None,
    **parse_options: Any,
) -> Result:
    """Parse *script* and run it on *data* (the RFC 5228 section 5.7 example message by default)."""
    return run(
        parse(script, **parse_options),
        SieveMessage.from_bytes(data),
        Envelope(mail_from, rcpt_to),
        context=context or Context(now=1_000_000_000.0),
    )


class FakeDuplicates:
    """A duplicate tracker in memory."""

    def __init__(self) -> None:
        self.marked: dict[tuple[str, str], int] = {}
        self.asked: list[tuple[str, str, int]] = []

    def seen(self, id: str, handle: str, seconds: int) -> bool:
        self.asked.append((id, handle, seconds))
        return (id, handle) in self.marked

    def mark(self, id: str, handle: str, seconds: int, last: bool) -> None:
        self.marked[(id, handle)] = seconds


class FakeVacation:
    """A vacation tracker in memory: who was answered with which handle."""

    def __init__(self, replied: set[tuple[str, str]] | None = None) -> None:
        self.replied = replied or set()
        self.asked: list[tuple[str, str, int]] = []

    def already_replied(self, sender: str, handle: str, seconds: int) -> bool:
        self.asked.append((sender, handle, seconds))
        return (sender, handle) in self.replied
