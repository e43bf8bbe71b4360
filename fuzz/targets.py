"""
The fuzz targets: one class per sans-IO entry point, each with its oracle.

``run(data)`` returns the run's features (see ``run.py``), raises
:class:`OracleViolation` when the oracle fails, or lets an exception out:
those in ``allowed`` are the documented ones, any other is a crash.
Decisions a session hands to the application (accept or reject) are drawn
from a PRNG seeded with the input's CRC-32, so a saved input replays
exactly.
"""

from __future__ import annotations

import random
import re
import tomllib
import zlib
from typing import Any, ClassVar

from txmail.auth import sasl
from txmail.auth.passwords import make_credentials

#: Output allowed per input: this much plus ``OUTPUT_PER_OCTET`` per input octet.
OUTPUT_BASE = 16384
OUTPUT_PER_OCTET = 64
NL = b"\n"

PASSWORD = "secret"
USER = "alice@example.test"
# Few PBKDF2 rounds: the fuzzer tests the exchange, not the key stretching.
CREDENTIALS = make_credentials(PASSWORD, iterations=2, salt=b"0123456789abcdef")


class OracleViolation(AssertionError):
    """The target's oracle failed: ``args[0]`` names the rule, ``args[1]`` gives the details."""


def check(condition: bool, rule: str, detail: object = "") -> None:
    if not condition:
        raise OracleViolation(rule, detail)


_VARIABLE = re.compile(r"'[^']*'|\"[^\"]*\"|\[[^\]]*\]|0x[0-9a-f]+|\d+")


def message_feature(text: str) -> str:
    """An error message as a feature: without the input's values (offsets, octets, quoted text)."""
    return _VARIABLE.sub("", text)[:60]


def bigrams(tokens: list[Any]) -> set[Any]:
    """Features of a sequence: each token after the one before it (edges of the protocol graph)."""
    prev: Any = None
    out = set()
    for t in tokens:
        out.add((prev, t))
        prev = t
    return out


def _splits(rng: random.Random, data: bytes) -> list[bytes]:
    if len(data) < 2:
        return [data]
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 4))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


class Target:
    name: ClassVar[str]
    #: Exceptions the entry point documents.
    allowed: ClassVar[tuple[type[BaseException], ...]] = ()
    max_len: ClassVar[int] = 4096
    dictionary: ClassVar[tuple[bytes, ...]] = ()

    def run(self, data: bytes) -> set[Any]:
        raise NotImplementedError


class SessionTarget(Target):
    """
    A sans-IO session driven the same way: input fed piece by piece, each
    event noted as a token (:meth:`_token`; ``None``: not noted) and each
    decision answered by :meth:`_decide`.
    """

    def _decide(self, session: Any, event: Any, rng: random.Random) -> None:
        raise NotImplementedError

    def _token(self, event: Any) -> Any:
        return type(event).__name__

    def _drive(self, session: Any, pieces: list[bytes], rng: random.Random, tokens: list[Any]) -> bytearray:
        out = bytearray(session.data_to_send())
        for piece in pieces:
            session.receive_data(piece)
            self._drain(session, rng, tokens)
            out += session.data_to_send()
        return out

    def _drain(self, session: Any, rng: random.Random, tokens: list[Any]) -> None:
        while (event := session.next_event()) is not None:
            token = self._token(event)
            if token is not None:
                tokens.append(token)
            if event.needs_decision:
                self._decide(session, event, rng)


#: Octets of the last run's output (set by :func:`check_output`): the time
#: budget is per octet of input and output, since a short command may
#: rightly answer at length (CAPA, EHLO, CAPABILITY).
last_output = 0


def check_output(data: bytes, out: bytes | bytearray | int) -> None:
    global last_output
    size = out if isinstance(out, int) else len(out)
    last_output = size
    check(
        size <= OUTPUT_BASE + OUTPUT_PER_OCTET * len(data),
        "output not bounded",
        f"{size} octets out for {len(data)} in",
    )


def _final_codes(out: bytes) -> list[bytes]:
    """The codes of the final lines of SMTP replies (``250 ...``, not ``250-...``)."""
    return [line[:3] for line in out.split(b"\r\n") if line[3:4] != b"-" and line]


# -- SMTP server ---------------------------------------------------------------


class SMTPServer(SessionTarget):
    """
    ``txmail.smtp.session.ServerSession`` fed client bytes, every decision
    answered (accept, or a 4xx/5xx reject), AUTH checked like the real
    authenticator.  Oracles: no exception; at most one final reply per
    input line (plus one closing reply; LMTP: one per recipient after the
    data); the same output when the input arrives in pieces; after the
    input (the last line ended, DATA ended, AUTH cancelled) a session that
    is not closed answers NOOP with exactly one ``250``; bounded output.
    """

    name = "smtp-server"
    max_len = 1536
    dictionary = (
        b"EHLO client.example\r\n",
        b"HELO x\r\n",
        b"LHLO x\r\n",
        b"MAIL FROM:<a@b.example>\r\n",
        b"MAIL FROM:<> SIZE=100 BODY=8BITMIME SMTPUTF8\r\n",
        b"MAIL FROM:<a@b> RET=HDRS ENVID=x+2Bz AUTH=<>\r\n",
        b"RCPT TO:<c@d.example>\r\n",
        b"RCPT TO:<Postmaster>\r\n",
        b"RCPT TO:<x@[192.0.2.1]> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x@y\r\n",
        b'RCPT TO:<"a b"@[IPv6:2001:db8::1]>\r\n',
        b"DATA\r\n",
        b"\r\n.\r\n",
        b"\r\n..\r\n",
        b"BDAT 5\r\nabcde",
        b"BDAT 0 LAST\r\n",
        b"BDAT 3 LAST\r\nxyz",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"QUIT\r\n",
        b"VRFY x\r\n",
        b"EXPN x\r\n",
        b"HELP\r\n",
        b"STARTTLS\r\n",
        b"AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=\r\n",
        b"AUTH PLAIN\r\n",
        b"AUTH LOGIN\r\n",
        b"AUTH LOGIN YWxpY2VAZXhhbXBsZS50ZXN0\r\n",
        b"c2VjcmV0\r\n",
        b"AUTH SCRAM-SHA-256 biwsbj1hbGljZUBleGFtcGxlLnRlc3Qscj1ub25jZQ==\r\n",
        b"=\r\n",
        b"*\r\n",
        b"\r\n",
        b"\n",
        b"\r",
        b"\x00",
        b"<",
        b">",
        b"@",
        b"\xc3\xa9",
    )

    def __init__(self) -> None:
        from txmail.smtp import codes, session
        from txmail.smtp import events as ev

        self.session_mod = session
        self.ev = ev
        self.codes = codes
        self.rejects = [
            codes.Reply(550, "5.7.1", "refused"),
            codes.Reply(451, "4.3.0", "try later"),
            codes.Reply(421, "4.3.2", "closing"),
        ]

    def _session(self, rng: random.Random) -> Any:
        role = rng.choice(("mta", "mta", "submission", "lmtp"))
        checks = frozenset(self.session_mod.CHECKS) if rng.random() < 0.2 else frozenset()
        return self.session_mod.ServerSession(
            "mx.example.test",
            role=role,
            tls_available=rng.random() < 0.5,
            auth_enabled=True,
            plaintext_auth="always",
            checks=checks,
            sasl_factory=fixed_nonce_sasl,
        )

    def _decide(self, session: Any, event: Any, rng: random.Random) -> None:
        ev = self.ev
        if rng.random() < 0.15 and not isinstance(event, ev.AuthStep):
            session.reject(rng.choice(self.rejects))
        elif isinstance(event, ev.AuthStep):
            session.accept(fake_authenticator(event.server, event.request))
        elif isinstance(event, ev.AuthFinished):
            session.accept()
        else:
            session.accept()

    def _token(self, event: Any) -> Any:
        return None if isinstance(event, self.ev.DataChunk) else type(event).__name__

    def run(self, data: bytes) -> set[Any]:
        crc = zlib.crc32(data)
        rng = random.Random(crc)
        session = self._session(rng)
        tokens: list[Any] = []
        out = self._drive(session, [data], rng, tokens)
        check_output(data, out)
        lmtp_extra = tokens.count("RcptTo") if session.role == "lmtp" else 0
        finals = _final_codes(bytes(out))
        check(
            len(finals) <= data.count(b"\n") + 2 + lmtp_extra,
            f"{len(finals)} final replies for {data.count(NL)} lines",
        )
        features = bigrams(tokens + [c.decode("latin-1") for c in finals])
        features.add(("state", session.state.value))
        if crc % 8 == 0 and "StartTLS" not in tokens:
            rng2 = random.Random(crc)
            again = self._session(rng2)
            out2 = self._drive(again, _splits(random.Random(crc + 1), data), rng2, [])
            check(out2 == out, "output differs when the input is split")
        self._probe(session, rng, tokens)
        return features

    def _probe(self, session: Any, rng: random.Random, tokens: list[Any]) -> None:
        """The session, if still open, must still answer NOOP."""
        state = self.session_mod.State
        for ending in (b"\r\n", b"\r\n.\r\n", b"*\r\n"):
            if session.state is state.CLOSED or session.paused:
                return
            if session.buffered_input or session.state in (state.DATA, state.AUTH):
                if session.state is state.DATA:
                    ending = b"\r\n.\r\n"
                session.receive_data(ending)
                self._drain(session, rng, tokens)
                session.data_to_send()
        if session.state is state.CLOSED or session.paused or session.state is state.BDAT:
            return
        if session.buffered_input or session.state is state.AUTH:
            return
        session.receive_data(b"NOOP\r\n")
        self._drain(session, rng, tokens)
        out = session.data_to_send()
        finals = _final_codes(out)
        expected = [b"503"] if session.refused else [b"250"]
        check(finals == expected or finals == [b"421"], "NOOP not answered", out[:80])


def fixed_nonce_sasl(mechanism: str) -> sasl.SASLServer:
    """A SASL server with a fixed SCRAM nonce: runs of one input must write the same octets."""
    return sasl.SASLServer(mechanism, server_nonce="fuzznonce")


def fake_authenticator(server: sasl.SASLServer, request: Any) -> Any:
    """What txmail.auth.authenticator.Authenticator does, synchronously, for alice only."""
    if isinstance(request, sasl.NeedPasswordCheck):
        return server.password_checked(request.username == USER and request.password.reveal() == PASSWORD)
    if isinstance(request, sasl.NeedCredentials):
        return server.provide_credentials(CREDENTIALS if request.username == USER else None)
    return request


# -- SMTP client ---------------------------------------------------------------


class SMTPClient(Target):
    """
    ``txmail.smtp.client.ClientSession`` fed server replies.  Oracles: no
    exception; after the input and ``connection_lost()`` there is exactly
    one ``TransactionDone``, the last event, with a status for every
    recipient; bounded output; the reply buffer stays bounded.
    """

    name = "smtp-client"
    max_len = 2048
    dictionary = (
        b"220 mx.example ESMTP\r\n",
        b"220-mx\r\n",
        b"250-mx.example\r\n",
        b"250-PIPELINING\r\n",
        b"250-SIZE 1000\r\n",
        b"250-8BITMIME\r\n",
        b"250-STARTTLS\r\n",
        b"250-AUTH PLAIN LOGIN\r\n",
        b"250-DSN\r\n",
        b"250-SMTPUTF8\r\n",
        b"250-CHUNKING\r\n",
        b"250 ENHANCEDSTATUSCODES\r\n",
        b"250 2.1.0 OK\r\n",
        b"250 OK\r\n",
        b"354 go ahead\r\n",
        b"221 bye\r\n",
        b"235 2.7.0 ok\r\n",
        b"334 \r\n",
        b"334 VXNlcm5hbWU6\r\n",
        b"421 4.3.2 closing\r\n",
        b"450 4.2.0 busy\r\n",
        b"452 4.5.3 too many\r\n",
        b"535 5.7.8 no\r\n",
        b"550 5.1.1 unknown\r\n",
        b"552 5.3.4 too big\r\n",
        b"554 no\r\n",
        b"\r\n",
        b"-",
        b" ",
    )

    def __init__(self) -> None:
        from txmail.smtp import client

        self.client = client

    def run(self, data: bytes) -> set[Any]:
        c = self.client
        rng = random.Random(zlib.crc32(data))
        stream = rng.random() < 0.3
        session = c.ClientSession(
            "client.example",
            rng.choice(("a@b.example", "", "ü@b.example")),
            ["x@y.example", ("z@y.example", {"NOTIFY": "NEVER"})][: rng.randint(1, 2)],
            message=None if stream else b"Subject: x\r\n\r\n.body\r\n" * rng.randint(1, 3),
            tls_policy=rng.choice(("none", "opportunistic", "verify")),
            auth=(USER, PASSWORD) if rng.random() < 0.4 else None,
            allow_plaintext_auth=True,
            mail_params={"RET": "HDRS"} if rng.random() < 0.3 else None,
        )
        out = len(session.data_to_send())
        tokens: list[Any] = []
        done = 0
        for piece in _splits(rng, data) if rng.random() < 0.3 else [data]:
            session.receive_data(piece)
            while (event := session.next_event()) is not None:
                tokens.append(type(event).__name__)
                check(done == 0, "an event after TransactionDone")
                if isinstance(event, c.StartTLS):
                    session.tls_started()
                elif isinstance(event, c.ReadyForData):
                    session.send_data(b"Subject: s\r\n\r\n.line\r\n")
                    session.end_data()
                elif isinstance(event, c.TransactionDone):
                    done += 1
            out += len(session.data_to_send())
            check(
                len(session._inbuf) <= c.MAX_REPLY + c.MAX_REPLY_LINE + len(piece), "reply buffer unbounded"
            )
        session.connection_lost()
        while (event := session.next_event()) is not None:
            tokens.append(type(event).__name__)
            check(done == 0, "an event after TransactionDone")
            if isinstance(event, c.TransactionDone):
                done += 1
        check(done == 1, "not one TransactionDone", done)
        check(session.closed, "not closed after connection_lost")
        result = session.result
        check(result is not None, "no result")
        for r in session._recipients:
            result.status(r.address)
        check_output(data, out)
        tokens.append(message_feature(result.error.split(":")[0]) if result.error else "ok")
        tokens.append(session.waiting_for)
        return bigrams(tokens)


# -- POP3 ------------------------------------------------------------------------


class POP3(SessionTarget):
    """
    ``txmail.pop3.session.POP3Session``.  Oracles: no exception; at most one
    response per input line (plus a closing one); the same output when the
    input is split; an open session in TRANSACTION answers NOOP with one
    ``+OK`` (AUTHORIZATION: one ``-ERR``); bounded output.
    """

    name = "pop3"
    max_len = 1536
    dictionary = (
        b"USER alice@example.test\r\n",
        b"PASS secret\r\n",
        b"APOP alice 0123456789abcdef0123456789abcdef\r\n",
        b"AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=\r\n",
        b"AUTH PLAIN\r\n",
        b"AUTH\r\n",
        b"AUTH SCRAM-SHA-256\r\n",
        b"AUTH LOGIN\r\n",
        b"CAPA\r\n",
        b"STLS\r\n",
        b"STAT\r\n",
        b"LIST\r\n",
        b"LIST 1\r\n",
        b"UIDL 2\r\n",
        b"RETR 1\r\n",
        b"TOP 1 0\r\n",
        b"DELE 1\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"QUIT\r\n",
        b"*\r\n",
        b"=\r\n",
        b"\r\n",
        b" ",
        b"\x00",
    )

    def __init__(self) -> None:
        from txmail.pop3 import events, session

        self.mod = session
        self.events = events
        self.maildrop = events.Maildrop(0x1234, ((3, 120), (5, 200), (9, 0)))

    def _decide(self, session: Any, event: Any, rng: random.Random) -> None:
        e = self.events
        reject = rng.random() < 0.15
        if isinstance(event, e.PasswordCheck):
            if event.username == USER and event.password.reveal() == PASSWORD and not reject:
                session.accept(USER)
            else:
                session.reject(self.mod.AUTH_FAILED)
        elif isinstance(event, e.AuthStep):
            session.accept(fake_authenticator(event.server, event.request))
        elif reject:
            session.reject(self.mod.Response(False, "no", "SYS/TEMP"))
        elif isinstance(event, e.Login):
            session.accept(self.maildrop)
        elif isinstance(event, e.Retrieve):
            session.accept(b"Subject: x\r\n\r\nbody\r\n.\r\n" if rng.random() < 0.5 else None)
        else:
            session.accept()

    def _session(self, rng: random.Random) -> Any:
        return self.mod.POP3Session(
            tls_available=rng.random() < 0.5, plaintext_auth="always", sasl_factory=fixed_nonce_sasl
        )

    def run(self, data: bytes) -> set[Any]:
        crc = zlib.crc32(data)
        rng = random.Random(crc)
        session = self._session(rng)
        tokens: list[Any] = []
        out = bytes(self._drive(session, [data], rng, tokens))
        check_output(data, len(out))
        # Status lines: "+OK"/"-ERR" at a line start (message lines are dot-stuffed, so "+OK" there is content).
        statuses = re.findall(rb"(?:^|\r\n)(\+OK|-ERR|\+ )", out)
        check(
            len(statuses) <= 1 + data.count(b"\n") + 1 + out.count(b"Subject: x"),
            "more responses than lines",
        )
        features = bigrams(tokens + [s.decode() for s in statuses])
        features.add(("state", session.state.value))
        if crc % 8 == 0 and "StartTLS" not in tokens:
            rng2 = random.Random(crc)
            again = self._session(rng2)
            out2 = bytes(self._drive(again, _splits(random.Random(crc + 1), data), rng2, []))
            check(out2 == out, "output differs when the input is split")
        self._probe(session, rng, tokens)
        return features

    def _probe(self, session: Any, rng: random.Random, tokens: list[Any]) -> None:
        state = self.mod.State
        if session.state is state.CLOSED or session.paused:
            return
        if session.buffered_input:
            session.receive_data(b"\r\n")
            self._drain(session, rng, tokens)
        if session.state is state.AUTH:
            session.receive_data(b"*\r\n")
            self._drain(session, rng, tokens)
        session.data_to_send()
        if session.state not in (state.AUTHORIZATION, state.TRANSACTION) or session.paused:
            return
        if session.buffered_input:
            return
        session.receive_data(b"NOOP\r\n")
        self._drain(session, rng, tokens)
        out = session.data_to_send()
        ok = session.state is state.TRANSACTION
        expected = b"+OK" if ok else b"-ERR"
        check(out.startswith(expected) and out.count(b"\r\n") == 1, "NOOP not answered", out[:80])


# -- IMAP ------------------------------------------------------------------------


class IMAPFramer(Target):
    """
    ``txmail.imap.fragment.CommandFramer``.  Oracles: no exception; the same
    events when the input is split; every command within the limits (line,
    literal, command size); buffered octets bounded.
    """

    name = "imap-framer"
    dictionary = (
        b"a1 LOGIN {5}\r\nalice {6}\r\nsecret\r\n",
        b"{5+}\r\n",
        b"{5-}\r\n",
        b"~{3}\r\n",
        b"{0}\r\n",
        b"{4294967296}\r\n",
        b"{99999999999999999999}\r\n",
        b" {",
        b"}\r\n",
        b"\r\n",
        b"\n",
        b"a2 ",
        b"+ ",
        b"* ",
    )

    MAX_LINE = 200
    MAX_LITERAL = 300
    MAX_COMMAND = 1000

    def __init__(self) -> None:
        from txmail.imap import fragment

        self.fragment = fragment

    def _frame(self, pieces: list[bytes], rng: random.Random) -> list[Any]:
        f = self.fragment
        framer = f.CommandFramer(
            max_line=self.MAX_LINE, max_literal=self.MAX_LITERAL, max_command=self.MAX_COMMAND
        )
        events: list[Any] = []
        for piece in pieces:
            framer.receive_data(piece)
            while (event := framer.next_event()) is not None:
                events.append(event)
                if isinstance(event, f.LiteralAnnounced):
                    if rng.random() < 0.8:
                        framer.accept_literal()
                    else:
                        framer.reject_literal()
                elif isinstance(event, f.CommandFragments):
                    size = 0
                    for frag in event.fragments:
                        size += len(frag.data)
                        if isinstance(frag, f.LineFragment):
                            check(len(frag.data) <= self.MAX_LINE, "line over max_line")
                        else:
                            check(len(frag.data) <= self.MAX_LITERAL, "literal over max_literal")
                    check(size <= self.MAX_COMMAND, "command over max_command")
            check(
                framer.buffered <= self.MAX_COMMAND + self.MAX_LINE + len(piece),
                f"{framer.buffered} octets buffered",
            )
        return events

    def run(self, data: bytes) -> set[Any]:
        crc = zlib.crc32(data)
        events = self._frame([data], random.Random(crc))
        if crc % 4 == 0:
            again = self._frame(_splits(random.Random(crc + 1), data), random.Random(crc))
            check(again == events, "events differ when the input is split")
        tokens = []
        for e in events:
            if isinstance(e, self.fragment.FramingError):
                tokens.append((e.text, e.code))
            elif isinstance(e, self.fragment.LiteralAnnounced):
                tokens.append(("literal", e.synchronizing, e.binary))
            else:
                tokens.append(tuple(type(f).__name__[0] for f in e.fragments)[:8])
        return bigrams(tokens)


class IMAPParser(Target):
    """
    The framer, then ``txmail.imap.parser.parse_command`` on every command
    (with and without UTF8=ACCEPT).  Oracle: only ``ParseError`` comes out;
    the command's tag is the line's; the same result twice (no hidden state).
    """

    name = "imap-parser"
    max_len = 2048

    dictionary = (
        b"a FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)]<0.100> BINARY[1.2] UID)\r\n",
        b"a UID FETCH 1,3:5,$ (ENVELOPE BODYSTRUCTURE) (CHANGEDSINCE 5 VANISHED)\r\n",
        b"a SEARCH CHARSET UTF-8 OR (FROM x SINCE 1-Jan-2020) NOT DELETED HEADER Subject {3}\r\nabc\r\n",
        b"a STORE 1 +FLAGS.SILENT (\\Seen $Junk)\r\n",
        b'a APPEND INBOX (\\Seen) "17-Jul-1996 02:44:25 -0700" {5}\r\nhello\r\n',
        b'a APPEND INBOX CATENATE (URL "/INBOX;UID=1" TEXT {3}\r\nabc)\r\n',
        b'a LIST (SUBSCRIBED) "" ("INBOX" "%") RETURN (CHILDREN STATUS (MESSAGES))\r\n',
        b"a STATUS &AOk- (MESSAGES UIDNEXT HIGHESTMODSEQ SIZE)\r\n",
        b"a SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211))\r\n",
        b"a SORT (REVERSE DATE) UTF-8 ALL\r\n",
        b"a THREAD REFERENCES UTF-8 ALL\r\n",
        b"a SETMETADATA INBOX (/private/comment {3}\r\nabc)\r\n",
        b"a NOTIFY SET (SELECTED (MessageNew (UID FLAGS) FlagChange))\r\n",
        b"a ENABLE CONDSTORE UTF8=ACCEPT\r\n",
        b'a ID ("name" "x")\r\n',
        b"a AUTHENTICATE PLAIN =\r\n",
        b'a LOGIN alice "sec\\"ret"\r\n',
        b" (",
        b")",
        b" NIL",
        b' "',
        b"\\\\",
        b"{3}\r\nabc",
        b"~{3}\r\na\x00c",
        b"*",
        b":",
        b",",
        b"[",
        b"]",
        b"<",
        b"&-",
        b"&AOk-",
        b"\xc3\xa9",
    )

    def __init__(self) -> None:
        from txmail.imap import fragment, parser

        self.fragment = fragment
        self.parser = parser

    def run(self, data: bytes) -> set[Any]:
        f = self.fragment
        framer = f.CommandFramer()
        framer.receive_data(data)
        tokens: list[Any] = []
        utf8 = zlib.crc32(data) % 3 == 0
        while (event := framer.next_event()) is not None:
            if isinstance(event, f.LiteralAnnounced):
                framer.accept_literal()
                continue
            if not isinstance(event, f.CommandFragments):
                continue
            results = []
            for _ in range(2):
                try:
                    command = self.parser.parse_command(event.fragments, utf8=utf8, utf8_names=utf8)
                except self.parser.ParseError as e:
                    first = event.fragments[0].data
                    check(
                        e.tag is None or first.startswith(e.tag.encode()),
                        "ParseError's tag is not the line's",
                    )
                    results.append(("error", e.text))
                else:
                    check(command.tag == event.tag, "the command's tag is not the line's")
                    results.append((command.name, type(command.args).__name__, command.invalid_name))
            check(results[0] == results[1], "two parses differ")
            tokens.append(results[0])
        return set(tokens) | bigrams([t[0] for t in tokens])


class IMAPRoundTrip(Target):
    """
    The parser and the serializer agree: a value parsed by a rule of
    ``txmail.imap.parser`` and written by ``txmail.imap.serialize`` parses
    back to the same value (astring, string, nstring, mailbox, sequence-set,
    flag-list, date-time; and mailbox names through modified UTF-7).  The
    first octet of the input picks the rule.
    """

    name = "imap-roundtrip"
    max_len = 1024
    dictionary = (
        b'"',
        b"\\",
        b"NIL",
        b"{3}\r\n",
        b"&-",
        b"&AOk-",
        b"*",
        b":",
        b",",
        b"(",
        b")",
        b"\\Seen",
        b"$",
    )

    def __init__(self) -> None:
        from txmail.imap import fragment, parser, serialize

        self.p = parser
        self.s = serialize
        self.f = fragment
        self.rules = [
            ("astring", parser.astring, serialize.astring),
            ("string", parser.string, serialize.string),
            ("nstring", parser.nstring, serialize.nstring),
            ("mailbox", parser.mailbox, serialize.mailbox),
            ("sequence-set", parser.sequence_set, serialize.sequence_set),
            ("flag-list", parser.flag_list, serialize.flag_list),
            ("date-time", parser.date_time, serialize.date_time),
        ]

    def _fragments(self, data: bytes) -> list[Any]:
        """Frame one value as the framer would (a literal marker at a line end becomes a literal)."""
        framer = self.f.CommandFramer()
        framer.receive_data(b"t " + data + b"\r\n")
        while (event := framer.next_event()) is not None:
            if isinstance(event, self.f.LiteralAnnounced):
                framer.accept_literal()
            elif isinstance(event, self.f.CommandFragments):
                frags = list(event.fragments)
                frags[0] = self.f.LineFragment(frags[0].data[2:])
                return frags
            else:
                return []
        return []

    def _parse(self, rule: Any, data: bytes) -> Any:
        c = self.p.Cursor(self._fragments(data))
        value = rule(c)
        c.end()
        return value, c.invalid_name

    def run(self, data: bytes) -> set[Any]:
        if not data:
            return set()
        name, parse, write = self.rules[data[0] % len(self.rules)]
        try:
            value, invalid = self._parse(parse, data[1:])
        except self.p.ParseError as e:
            return {(name, e.text)}
        if invalid:
            return {(name, "invalid name")}
        written = write(value)
        try:
            back, _ = self._parse(parse, written)
        except self.p.ParseError as e:
            raise OracleViolation(
                f"{name}: {value!r} written as {written!r} does not parse: {e.text}"
            ) from None
        if name == "date-time":
            check(
                back == value and back.utcoffset() == value.utcoffset(), "date-time round trip", (value, back)
            )
        else:
            check(back == value, f"{name} round trip", (value, written, back))
        return {(name, "ok", type(value).__name__, written[:1])}


class IMAPSession(Target):
    """
    ``txmail.imap.session.IMAPSession`` with every Execute finished (OK, NO
    or BAD; SELECT/EXAMINE select a three-message view), LOGIN and
    AUTHENTICATE checked like the real authenticator.  Oracles: no
    exception; no more tagged completions than command lines; bounded
    output; an open session (IDLE ended, AUTHENTICATE cancelled, the last
    line ended) answers ``NOOP`` with exactly one tagged OK.
    """

    name = "imap-session"
    max_len = 1536
    dictionary = (
        *IMAPParser.dictionary,
        b"a CAPABILITY\r\n",
        b"a LOGIN alice@example.test secret\r\n",
        b"a AUTHENTICATE PLAIN\r\n",
        b"AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=\r\n",
        b"a SELECT INBOX\r\n",
        b"a IDLE\r\n",
        b"DONE\r\n",
        b"a STARTTLS\r\n",
        b"a LOGOUT\r\n",
        b"a NOOP\r\n",
        b"a COMPRESS DEFLATE\r\n",
        b"a UNSELECT\r\n",
        b"a CLOSE\r\n",
    )

    def __init__(self) -> None:
        from txmail.imap import events, session, view
        from txmail.model import MessageInfo

        self.mod = session
        self.e = events
        self._probing = False
        self.view = lambda: view.SelectedView(
            "INBOX", 42, [MessageInfo(u, frozenset(), 100, 0.0, u) for u in (1, 2, 3)]
        )

    def _drain(self, session: Any, rng: random.Random, tokens: list[Any]) -> None:
        e = self.e
        while (event := session.next_event()) is not None:
            name = type(event).__name__
            if isinstance(event, e.Execute):
                name = event.command.name
                roll = 1.0 if self._probing else rng.random()
                if roll < 0.1:
                    session.reject(("NO", "no", None))
                elif roll < 0.15:
                    session.reject(("BAD", "bad", None))
                else:
                    if event.command.name in ("SELECT", "EXAMINE"):
                        session.select(self.view())
                    session.finish("OK", "done")
            elif isinstance(event, e.PasswordCheck):
                if event.username in ("alice", USER) and rng.random() < 0.9:
                    session.accept(USER)
                else:
                    session.reject()
            elif isinstance(event, e.AuthStep):
                session.accept(fake_authenticator(event.server, event.request))
            elif isinstance(event, e.StartTLS):
                if rng.random() < 0.8:
                    session.accept()
                else:
                    session.reject(("BAD", "no", None))
            elif event.needs_decision:
                raise OracleViolation(f"unknown decision {name}")
            tokens.append(name)

    def run(self, data: bytes) -> set[Any]:
        rng = random.Random(zlib.crc32(data))
        session = self.mod.IMAPSession(plaintext_auth="always", tls_available=rng.random() < 0.5)
        tokens: list[Any] = []
        out = bytearray(session.data_to_send())
        session.receive_data(data)
        self._drain(session, rng, tokens)
        out += session.data_to_send()
        check_output(data, out)
        completions = re.findall(rb"\r\n([^ \r\n*+]+) (OK|NO|BAD)", b"\r\n" + out)
        check(len(completions) <= data.count(b"\n") + 1, "more tagged replies than lines")
        tokens += [c[1].decode() for c in completions]
        features = bigrams(tokens)
        features.add(("state", session.state))
        self._probe(session, rng, tokens)
        return features

    def _framer_idle(self, session: Any) -> bool:
        framer = session._framer
        return framer._mode.value == "line" and not framer._fragments and not framer.buffered

    def _probe(self, session: Any, rng: random.Random, tokens: list[Any]) -> None:
        """End what the input left open (a line, IDLE, AUTHENTICATE), then NOOP must get one tagged OK."""
        state = self.mod.State
        self._probing = True
        try:
            for ending in (b"\r\n", b"*\r\n", b"DONE\r\n"):
                if session.state is state.LOGOUT or session.paused or session._framer._mode.value != "line":
                    return
                if (
                    (ending == b"\r\n" and not self._framer_idle(session))
                    or (ending == b"*\r\n" and session._sasl is not None)
                    or (ending == b"DONE\r\n" and session.idling)
                ):
                    session.receive_data(ending)
                    self._drain(session, rng, tokens)
            session.data_to_send()
            if (
                session.state is state.LOGOUT
                or session.paused
                or session.idling
                or session._sasl is not None
                or not self._framer_idle(session)
            ):
                return
            session.receive_data(b"zz9 NOOP\r\n")
            self._drain(session, rng, tokens)
            out = session.data_to_send()
            replies = re.findall(rb"(?:^|\r\n)zz9 ([A-Z]+)", out)
            check(replies == [b"OK"], "NOOP not answered", out[-120:])
        finally:
            self._probing = False


# -- MIME, addresses, modified UTF-7, config, Sieve ------------------------------


class MIME(Target):
    """
    ``txmail.mime.parse_metadata`` and friends.  Oracles: no exception
    ("any input gives an answer"); ``parse_header_section`` agrees with
    ``parse_metadata`` on the header; the metadata cache round trip
    (``decode_metadata(encode_metadata(m)) == m``); ``preview`` and
    ``extract_section`` of the first part do not fail; bounded sizes.
    """

    name = "mime"
    max_len = 16384
    dictionary = (
        b"Content-Type: multipart/mixed; boundary=XX\r\n",
        b'Content-Type: multipart/alternative; boundary="a b"\r\n',
        b"Content-Type: message/rfc822\r\n",
        b"Content-Type: text/plain; charset=iso-8859-1; format=flowed\r\n",
        b"Content-Type: text/html; name*0*=utf-8''%C3%A9; name*1=x\r\n",
        b"Content-Transfer-Encoding: base64\r\n",
        b"Content-Transfer-Encoding: quoted-printable\r\n",
        b'Content-Disposition: attachment; filename="a.txt"\r\n',
        b"Content-Language: en, fr\r\n",
        b'From: "A B" <a@b.example>, c@d\r\n',
        b"To: group: x@y, z@w;, (comment) <u@v>\r\n",
        b"Subject: =?utf-8?q?caf=C3=A9?= =?iso-8859-1?b?6Q==?=\r\n",
        b"Date: Mon, 7 Dec 2026 10:00:00 +0100\r\n",
        b"Message-ID: <x@y>\r\n",
        b"In-Reply-To: <a@b> <c@d>\r\n",
        b"\r\n--XX\r\n",
        b"\r\n--XX--\r\n",
        b"\r\n\r\n",
        b"\n",
        b" folded\r\n",
        b"\t",
        b";",
        b"=",
        b'"',
    )

    def __init__(self) -> None:
        from txmail import mime

        self.mime = mime

    def run(self, data: bytes) -> set[Any]:
        m = self.mime
        md = m.parse_metadata(data)
        size, headers = m.parse_header_section(data)
        check(size == md.header_size, "parse_header_section size", (size, md.header_size))
        check(headers == md.headers, "parse_header_section headers differ from parse_metadata's")
        encoded = m.encode_metadata(md)
        back = m.decode_metadata(encoded)
        check(
            (back.header_size, back.headers, back.envelope, back.body_structure, back.lines)
            == (md.header_size, md.headers, md.envelope, md.body_structure, md.lines),
            "metadata cache round trip differs",
        )
        check(len(encoded) <= 64 * len(data) + 4096, "metadata not bounded", len(encoded))
        m.preview(data)
        m.extract_section(data, "1")
        m.extract_section(data, "HEADER")
        features: set[Any] = set()

        def walk(body: Any, depth: int = 0) -> None:
            if not isinstance(body, tuple) or not body:
                return
            if isinstance(body[0], tuple):
                parts = [b for b in body if isinstance(b, tuple)]
                subtype = body[len(parts)] if len(body) > len(parts) else None
                features.add(("multipart", depth, subtype))
                for part in parts:
                    walk(part, depth + 1)
            else:
                features.add(("part", depth, body[0], body[1] if len(body) > 1 else None))

        walk(md.body_structure)
        features.add(("fields", min(len(md.headers), 20)))
        features.update(("env", i, v is None) for i, v in enumerate(md.envelope))
        return features


class Addresses(Target):
    """
    The SMTP grammar (``txmail.smtp.grammar``): MAIL/RCPT arguments, EHLO
    names, ESMTP parameters, xtext, and the header-field address parser of
    ``txmail.mime``.  Oracles: only ``GrammarError`` (a ``ValueError``)
    comes out of the grammar; a parsed path's ``str()`` parses back to the
    same mailbox; xtext round trips.
    """

    name = "addresses"
    max_len = 1024
    dictionary = (
        b"<",
        b">",
        b"@",
        b'"',
        b"\\",
        b"[IPv6:2001:db8::1]",
        b"[192.0.2.1]",
        b"[tag:x]",
        b"@a.example,@b.example:",
        b"Postmaster",
        b" SIZE=1",
        b" BODY=8BITMIME",
        b" NOTIFY=NEVER",
        b" ORCPT=rfc822;a+2Bb@c",
        b"=",
        b"+2B",
        b"+",
        b"xn--",
        b"\xc3\xa9",
        b".",
        b"-",
    )

    def __init__(self) -> None:
        from txmail import mime
        from txmail.smtp import grammar

        self.g = grammar
        self.mime = mime
        self.rules = [
            ("mail", grammar.mail_from_argument),
            ("rcpt", grammar.rcpt_to_argument),
            ("helo", grammar.helo_name),
            ("params", grammar.esmtp_params),
            ("domain", grammar.domain),
            ("mailbox", grammar.mailbox),
            ("xtext", grammar.xtext_decode),
            ("bdat", grammar.bdat_argument),
            ("header", None),
        ]

    def run(self, data: bytes) -> set[Any]:
        if not data:
            return set()
        name, rule = self.rules[data[0] % len(self.rules)]
        text = data[1:].decode("utf-8", "surrogateescape")
        if rule is None:
            result = self.mime.field_addresses(b"To: " + data[1:] + b"\r\n\r\n", "to")
            return {(name, len(result) > 0, tuple(len(a) for a in result[:2]))}
        try:
            value = rule(text)
        except self.g.GrammarError as e:
            return {(name, type(e).__name__, message_feature(str(e)))}
        if name in ("mail", "rcpt") and value[0] is not None:
            box = value[0]
            again = (self.g.reverse_path if name == "mail" else self.g.forward_path)(f"<{box}>")
            check(again == box, "path round trip", (box, again))
        if name == "mailbox":
            check(self.g.mailbox(str(value)) == value, "mailbox round trip", value)
        if name == "xtext" and value is not None:
            check(self.g.xtext_decode(self.g.xtext_encode(value)) == value, "xtext round trip")
        return {(name, "ok", type(value).__name__)}


class MUTF7(Target):
    """
    Modified UTF-7 (RFC 3501 section 5.1.3) in ``txmail.imap.parser``.
    Oracles: decoding raises only ``ValueError``; what decodes encodes back
    to the same octets (the decoder is strict, so the form is canonical);
    any text encodes to printable ASCII that decodes back to it.
    """

    name = "mutf7"
    max_len = 512
    dictionary = (
        b"&",
        b"-",
        b"&-",
        b"&AOk-",
        b"&2D3eAA-",
        b"&ZeVnLIqe-",
        b",",
        b"+",
        b"A",
        b"\xc3\xa9",
        b"\xf0\x9f\x98\x80",
    )

    def __init__(self) -> None:
        from txmail.imap import parser

        self.p = parser

    def run(self, data: bytes) -> set[Any]:
        text = data.decode("latin-1")
        try:
            decoded = self.p.decode_mailbox_name(text)
        except ValueError as e:
            feature = ("error", message_feature(str(e)))
        else:
            # Strict: only printable ASCII on the wire (RFC 3501 section 5.1.3).
            check(
                all(" " <= ch <= "~" for ch in text),
                "decoded a name with octets outside printable ASCII",
                text,
            )
            encoded = self.p.encode_mailbox_name(decoded)
            check(self.p.decode_mailbox_name(encoded) == decoded, "decoded name round trip", (text, encoded))
            if "-&" not in text:
                # One shift per run of non-ASCII: the canonical form (adjacent shifts are merged).
                check(encoded == text, "canonical form", (text, encoded))
            feature = ("ok", text.count("&"))
        unicode_text = data.decode("utf-8", "replace")
        encoded = self.p.encode_mailbox_name(unicode_text)
        check(
            encoded.isascii() and encoded.isprintable(),
            "encoding not printable ASCII",
            (unicode_text, encoded),
        )
        check(self.p.decode_mailbox_name(encoded) == unicode_text, "text round trip", unicode_text)
        return {feature}


class Config(Target):
    """
    The config loader, TOML text to ``Settings`` as ``txmail.config.load_config``
    reads a file.  Oracle: only ``ConfigError`` comes out.
    """

    name = "config"
    max_len = 4096
    dictionary = (
        b"[server]\n",
        b"[smtp]\n",
        b"[imap]\n",
        b"[pop3]\n",
        b"[tls]\n",
        b"[queue]\n",
        b"[web]\n",
        b"[postgresql]\n",
        b"[directory]\n",
        b"[store]\n",
        b"[outbound]\n",
        b"[policy]\n",
        b"[limits]\n",
        b'hostname = "mx.example.com"\n',
        b'domains = ["example.com"]\n',
        b'listen = ["tcp:25"]\n',
        b"max_line = 100\n",
        b"max_message_size = 1000\n",
        b'plaintext_auth = "loopback"\n',
        b'tls_policy = "verify"\n',
        b'retry_schedule = "5m,10m"\n',
        b"= ",
        b"true",
        b"-1",
        b"1e400",
        b"nan",
        b"{}",
        b"[]",
        b'""',
        b"'''",
    )

    def __init__(self) -> None:
        from txmail import config

        self.c = config
        self.allowed = (config.ConfigError,)

    def run(self, data: bytes) -> set[Any]:
        c = self.c
        try:
            document = tomllib.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            # load_config turns these into ConfigError.
            return {("toml", message_feature(str(e)))}
        try:
            c._validate(c._flatten(document))
        except c.ConfigError as e:
            return {("config", message_feature(str(e)))}
        return {("ok",)}


class Sieve(Target):
    """
    Compiling a Sieve script (``txmail.sieve.parse``).  Oracle: only
    ``SieveError`` comes out.
    """

    name = "sieve"
    max_len = 4096
    dictionary = (
        b'require ["fileinto", "reject", "vacation", "variables", "envelope", "body", "imap4flags", "copy", "include", "relational", "comparator-i;ascii-numeric", "subaddress", "regex", "date", "editheader", "mailbox", "spamtest"];\n',
        b'if header :contains "subject" "x" { fileinto "Junk"; stop; }\n',
        b'if anyof (not exists "x", size :over 10K, address :domain :is "from" "a.b") { discard; }\n',
        b'elsif true { keep; } else { redirect "a@b"; }\n',
        b'vacation :days 7 :subject "away" "text";\n',
        b'set "a" "${b}";\n',
        b"text:\nline\n.\n",
        b'include :personal "x";\n',
        b'if body :raw :contains "x" {}\n',
        b'if header :value "gt" :comparator "i;ascii-numeric" "x" "5" {}\n',
        b'addflag "\\\\Seen";\n',
        b"/* c */",
        b"# c\n",
        b"{",
        b"}",
        b"[",
        b"]",
        b"(",
        b")",
        b",",
        b";",
        b'"',
        b":",
        b"1K",
        b"99999999999999999999G",
    )

    def __init__(self) -> None:
        from txmail import sieve
        from txmail.sieve.errors import SieveError

        self.sieve = sieve
        self.allowed = (SieveError,)

    def run(self, data: bytes) -> set[Any]:
        text = data.decode("utf-8", "replace")
        try:
            script = self.sieve.parse(text)
        except self.allowed[0] as e:
            return {("error", message_feature(str(e)))}
        return {("ok", len(script.nodes) if hasattr(script, "nodes") else 0)}


# -- ManageSieve -------------------------------------------------------------------


_MS_LITERAL = re.compile(rb"\{(\d+)\+?\}$")
_MS_STATUS = re.compile(rb"(OK|NO|BYE)(?= |$)")


def managesieve_responses(out: bytes) -> list[bytes]:
    """
    The status responses (``OK``, ``NO``, ``BYE``) in a ManageSieve server's
    output, read as a client does: a line ending in a literal marker goes
    on after the literal's octets, so literal contents are never taken for
    a response (RFC 5804 section 4's ``response`` grammar).
    """
    found: list[bytes] = []
    pos = 0
    start = True
    while pos < len(out):
        end = out.find(b"\r\n", pos)
        if end < 0:
            end = len(out)
        line = out[pos:end]
        if start and (m := _MS_STATUS.match(line)):
            found.append(m.group(1))
        pos = end + 2
        marker = _MS_LITERAL.search(line)
        if marker is not None:
            pos += int(marker.group(1))
            start = False
        else:
            start = True
    return found


class ManageSieve(SessionTarget):
    """
    ``txmail.managesieve.session.ManageSieveSession`` fed client bytes, each
    script request answered like the adapter does (scripts checked with
    ``check_script``, store errors drawn at random), AUTHENTICATE checked
    like the real authenticator.  Oracles: no exception; at most one
    status response per input line (plus the greeting, STARTTLS's
    capabilities sent again, and a closing one), counted as a client reads
    them (literals skipped); the same output when the input arrives in
    pieces; after the input (the last line ended, a SASL exchange
    cancelled) an open session answers NOOP with exactly one ``OK``;
    bounded output.
    """

    name = "managesieve"
    max_len = 2048
    dictionary = (
        b"CAPABILITY\r\n",
        b"LOGOUT\r\n",
        b'NOOP "tag"\r\n',
        b"STARTTLS\r\n",
        b'AUTHENTICATE "PLAIN" "AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ="\r\n',
        b'AUTHENTICATE "PLAIN"\r\n',
        b'AUTHENTICATE "SCRAM-SHA-256"\r\n',
        b'AUTHENTICATE "LOGIN"\r\n',
        b'"*"\r\n',
        b'HAVESPACE "s" 100\r\n',
        b'PUTSCRIPT "s" {6+}\r\nkeep;\n\r\n',
        b'PUTSCRIPT "s" "keep;"\r\n',
        b'CHECKSCRIPT "if true { discard; }"\r\n',
        b"LISTSCRIPTS\r\n",
        b'SETACTIVE "s"\r\n',
        b'SETACTIVE ""\r\n',
        b'GETSCRIPT "s"\r\n',
        b'DELETESCRIPT "s"\r\n',
        b'RENAMESCRIPT "s" "t"\r\n',
        b"UNAUTHENTICATE\r\n",
        b"{0}\r\n",
        b"{5+}\r\n",
        b"{4294967296}\r\n",
        b'"',
        b"\\",
        b"\r\n",
        b" ",
        b"\x00",
    )

    def __init__(self) -> None:
        from txmail import errors
        from txmail.managesieve import events, session

        self.mod = session
        self.events = events
        self.store_errors: tuple[BaseException, ...] = (
            errors.NoSuchScript("s"),
            errors.ScriptExists("s"),
            errors.ScriptActive("s"),
            errors.InvalidScriptName("s"),
            session.QuotaMaxScripts(),
            RuntimeError("the store is down"),
        )

    def _decide(self, session: Any, event: Any, rng: random.Random) -> None:
        e = self.events
        if isinstance(event, e.AuthStep):
            session.accept(fake_authenticator(event.server, event.request))
        elif isinstance(event, e.StartTLS):
            session.accept()
            session.tls_started()
        elif isinstance(event, e.ScriptRequest):
            if rng.random() < 0.15:
                session.fail(rng.choice(self.store_errors))
                return
            command, args = event.command, event.args
            if command in ("PUTSCRIPT", "CHECKSCRIPT"):
                try:
                    self.mod.check_script(bytes(args[-1]))  # type: ignore[arg-type]
                except self.mod.ScriptInvalid as error:
                    session.fail(error)
                    return
            if command == "LISTSCRIPTS":
                session.accept([("s", True), ("t", False)])
            elif command == "GETSCRIPT":
                session.accept(b"keep;\r\n")
            else:
                session.accept()
        else:
            session.accept()

    def _token(self, event: Any) -> Any:
        return getattr(event, "command", type(event).__name__)

    def _session(self, rng: random.Random) -> Any:
        return self.mod.ManageSieveSession(
            tls_available=rng.random() < 0.5,
            plaintext_auth="always",
            max_script_size=rng.choice((64, 1024, 1024 * 1024)),
            max_bad_commands=rng.choice((3, 10)),
            sasl_factory=fixed_nonce_sasl,
        )

    def run(self, data: bytes) -> set[Any]:
        crc = zlib.crc32(data)
        rng = random.Random(crc)
        session = self._session(rng)
        tokens: list[Any] = []
        out = bytes(self._drive(session, [data], rng, tokens))
        check_output(data, len(out))
        statuses = managesieve_responses(out)
        starttls = tokens.count("StartTLS")
        check(
            len(statuses) <= 1 + data.count(b"\n") + starttls + 1,
            "more responses than lines",
            statuses[-8:],
        )
        features = bigrams(tokens + [s.decode() for s in statuses])
        features.add(("state", session.state.value))
        if crc % 8 == 0 and not starttls:
            rng2 = random.Random(crc)
            again = self._session(rng2)
            out2 = bytes(self._drive(again, _splits(random.Random(crc + 1), data), rng2, []))
            check(out2 == out, "output differs when the input is split")
        self._probe(session, rng, tokens)
        session.connection_lost()
        return features

    def _probe(self, session: Any, rng: random.Random, tokens: list[Any]) -> None:
        state = self.mod.State
        if session.state is state.CLOSED or session.paused:
            return
        if session.buffered_input:
            session.receive_data(b"\r\n")
            self._drain(session, rng, tokens)
        if session.state is state.AUTHENTICATING and not session.paused:
            session.receive_data(b'"*"\r\n')
            self._drain(session, rng, tokens)
        session.data_to_send()
        if session.state is state.CLOSED or session.paused or session.buffered_input:
            return
        if session.state is state.AUTHENTICATING or session._discard or session._discard_line:
            return  # inside an exchange, or an over-long literal is still being dropped
        session.receive_data(b"NOOP\r\n")
        self._drain(session, rng, tokens)
        out = session.data_to_send()
        check(
            managesieve_responses(out) == [b"OK"] and out.count(b"\r\n") == 1, "NOOP not answered", out[:80]
        )


TARGETS: dict[str, type[Target]] = {
    t.name: t
    for t in (
        SMTPServer,
        SMTPClient,
        POP3,
        IMAPFramer,
        IMAPParser,
        IMAPRoundTrip,
        IMAPSession,
        MIME,
        Addresses,
        MUTF7,
        Config,
        Sieve,
        ManageSieve,
    )
}
