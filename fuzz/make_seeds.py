#!/usr/bin/env python3
"""
Write the seed corpus, ``fuzz/corpus/<target>/``: the byte and string
literals of the existing tests that look like each target's input, plus the
transcripts of the RFCs' examples (``rfc-*`` files, written by hand).

    python fuzz/make_seeds.py

Run it again after adding tests; the ``t-*`` files are replaced, the
``rfc-*`` files are kept.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"

#: Most seeds per target from the tests (the corpus grows by mutation).
MAX_SEEDS = 300


def literals(*paths: str) -> Iterator[bytes]:
    """Byte and string literals (and concatenations of them) in the test files."""
    for pattern in paths:
        for path in sorted(TESTS.glob(pattern)):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, bytes | str):
                    value = node.value
                    yield value if isinstance(value, bytes) else value.encode("utf-8")


def pick(source: Iterator[bytes], keep: Callable[[bytes], bool]) -> list[bytes]:
    seen: dict[bytes, None] = {}
    for data in source:
        if keep(data):
            seen[data] = None
    # Longest first: whole transcripts before single lines.
    return sorted(seen, key=len, reverse=True)[:MAX_SEEDS]


SMTP_COMMAND = re.compile(rb"^(EHLO|HELO|LHLO|MAIL|RCPT|DATA|BDAT|RSET|NOOP|QUIT|AUTH|STARTTLS|VRFY)", re.I)
POP3_COMMAND = re.compile(
    rb"^(USER|PASS|APOP|AUTH|CAPA|STLS|STAT|LIST|RETR|TOP|DELE|RSET|NOOP|QUIT|UIDL)", re.I
)
IMAP_COMMAND = re.compile(rb"^[A-Za-z0-9.]+ [A-Za-z]+")
MANAGESIEVE_COMMAND = re.compile(
    rb"^(CAPABILITY|LOGOUT|NOOP|STARTTLS|AUTHENTICATE|HAVESPACE|PUTSCRIPT|LISTSCRIPTS|SETACTIVE"
    rb"|GETSCRIPT|DELETESCRIPT|RENAMESCRIPT|CHECKSCRIPT|UNAUTHENTICATE)",
    re.I,
)

SEEDS: dict[str, Callable[[], list[bytes]]] = {
    "smtp-server": lambda: pick(
        literals(
            "smtp/test_session.py", "smtp/test_server.py", "smtp/test_lmtp.py", "test_hostile_inputs.py"
        ),
        lambda d: b"\n" in d and SMTP_COMMAND.match(d) is not None,
    ),
    "smtp-client": lambda: pick(
        literals("smtp/test_client.py", "smtp/test_relay.py"),
        lambda d: re.match(rb"^[2-5]\d\d[ -]", d) is not None and b"\n" in d,
    ),
    "pop3": lambda: pick(
        literals("pop3/test_session.py", "pop3/test_server.py"),
        lambda d: b"\n" in d and POP3_COMMAND.match(d) is not None,
    ),
    "imap-framer": lambda: pick(
        literals("imap/test_fragment.py", "imap/test_session.py"),
        lambda d: b"\n" in d and IMAP_COMMAND.match(d) is not None,
    ),
    "imap-parser": lambda: pick(
        literals("imap/test_parser.py", "imap/test_session.py", "imap/test_commands.py"),
        lambda d: IMAP_COMMAND.match(d) is not None and len(d) < 2048,
    ),
    "imap-session": lambda: pick(
        literals("imap/test_session.py", "imap/test_server.py", "imap/test_server_fuzz.py"),
        lambda d: b"\n" in d and IMAP_COMMAND.match(d) is not None and len(d) < 2048,
    ),
    "mime": lambda: pick(
        literals("test_mime.py", "imap/test_fetch.py"), lambda d: b":" in d and b"\n" in d and len(d) > 20
    ),
    "addresses": lambda: [
        bytes([i]) + d
        for i, d in enumerate(
            pick(
                literals("smtp/test_grammar.py"),
                lambda d: (b"@" in d or b"<" in d or b"=" in d) and len(d) < 300,
            )
        )
    ],
    "mutf7": lambda: pick(
        literals("imap/test_parser.py", "imap/test_serialize.py"), lambda d: b"&" in d and len(d) < 200
    ),
    "config": lambda: pick(literals("test_config.py"), lambda d: b"=" in d and b"[" in d and b"\n" in d),
    "managesieve": lambda: pick(
        literals("managesieve/test_session.py", "managesieve/test_server.py"),
        lambda d: b"\n" in d and MANAGESIEVE_COMMAND.match(d) is not None,
    ),
    "sieve": lambda: pick(literals("sieve/*.py"), lambda d: b";" in d and len(d) < 4096),
}


def roundtrip_seeds() -> list[bytes]:
    """The first octet picks the rule (see targets.IMAPRoundTrip)."""
    values = {
        0: [b"INBOX", b'"a b"', b"{3}\r\nabc", b'"q\\"x"', b"NIL"],
        1: [b'"hello"', b"{5}\r\nhello", b'"\xc3\xa9"'],
        2: [b"NIL", b'"x"', b"{0}\r\n"],
        3: [b"INBOX", b"&AOk-t&AOk-", b'"a b"', b"Sent", b"{4}\r\n&-&-"],
        4: [b"1:*", b"1,3:5,7", b"$", b"4294967295", b"*:1"],
        5: [b"(\\Seen \\Flagged $Junk)", b"()"],
        6: [b'"17-Jul-1996 02:44:25 -0700"', b'" 1-Jan-2000 00:00:00 +0000"'],
    }
    return [bytes([rule]) + v for rule, vs in values.items() for v in vs]


def main() -> None:
    SEEDS["imap-roundtrip"] = roundtrip_seeds
    for target, make in SEEDS.items():
        directory = HERE / "corpus" / target
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("t-*"):
            old.unlink()
        seeds = make()
        for data in seeds:
            (directory / f"t-{hashlib.sha1(data).hexdigest()[:12]}").write_bytes(data)
        print(f"{target}: {len(seeds)} seeds from the tests")


if __name__ == "__main__":
    main()
