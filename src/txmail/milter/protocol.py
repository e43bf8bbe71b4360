"""
The Sendmail milter protocol, client (MTA) side, without I/O.

The protocol is not an RFC: it is what Sendmail's ``libmilter`` (8.14,
protocol version 6) and Postfix's ``src/milter/milter8.c`` speak, and what
every milter (OpenDKIM, rspamd's proxy worker, ClamAV) is written against.
This module follows Postfix, the reference MTA client.

Packets
-------
Every packet, both ways, is a 4-octet big-endian length, then one command
octet, then ``length - 1`` octets of data.  Strings in the data end with a
NUL.  The MTA sends commands (``SMFIC_*``); the milter answers with replies
(``SMFIR_*``).

A session
---------
1. ``SMFIC_OPTNEG``: version, the actions the milter may take
   (``SMFIF_*``) and the protocol steps the MTA can leave out
   (``SMFIP_*``).  The milter answers with its version, the actions it wants
   and the steps it wants left out or unanswered, optionally followed by
   the macro names it wants at each stage (``SMFIF_SETSYMLIST``).
2. Per connection: ``SMFIC_CONNECT``, ``SMFIC_HELO``; per message:
   ``SMFIC_MAIL``, ``SMFIC_RCPT`` (each), ``SMFIC_DATA``, ``SMFIC_HEADER``
   (each), ``SMFIC_EOH``, ``SMFIC_BODY`` (chunks of at most 65535 octets),
   ``SMFIC_BODYEOB``.  Each may be preceded by ``SMFIC_MACRO`` (never
   answered).  ``SMFIC_ABORT`` ends a message early (never answered);
   ``SMFIC_QUIT`` ends the session.
3. Each command the milter did not ask to leave unanswered (``SMFIP_NR_*``)
   gets one final reply (accept, continue, reject, tempfail, discard,
   replycode, skip), possibly after any number of ``SMFIR_PROGRESS``.  Only
   after ``SMFIC_BODYEOB`` may modification replies (add, insert or change a
   header field, replace the body, quarantine) come before the final one.

:class:`MilterClient` keeps that state: a stage method encodes a command
(and its macros) into :meth:`MilterClient.data_to_send` and says whether a
reply is awaited; :meth:`MilterClient.receive_data` parses what the milter
sends and checks that it fits; :meth:`MilterClient.next_event` gives
:class:`Negotiated`, :class:`Progress` and :class:`Decision` events.  Anything
that does not fit (garbled or oversized packets, replies nobody asked for,
actions that were not negotiated, more modifications than one message may
carry) raises :class:`MilterProtocolError`; the caller then drops the
milter connection.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "ACTIONS_OFFERED",
    "MAX_BODY_CHUNK",
    "MAX_HEADER_EDITS",
    "MAX_MODIFICATIONS",
    "MAX_PACKET",
    "PROTOCOL_OFFERED",
    "PROTOCOL_VERSION",
    "AddHeader",
    "ChangeHeader",
    "Decision",
    "InsertHeader",
    "MilterClient",
    "MilterProtocolError",
    "Negotiated",
    "PacketReader",
    "Progress",
    "Quarantine",
    "ReplaceBody",
    "encode_packet",
    "parse_negotiation",
    "parse_reply",
]

# --- commands, MTA to milter (libmilter mfdef.h) ---------------------------
SMFIC_ABORT = b"A"
SMFIC_BODY = b"B"
SMFIC_CONNECT = b"C"
SMFIC_MACRO = b"D"
SMFIC_BODYEOB = b"E"
SMFIC_HELO = b"H"
SMFIC_QUIT_NC = b"K"
SMFIC_HEADER = b"L"
SMFIC_MAIL = b"M"
SMFIC_EOH = b"N"
SMFIC_OPTNEG = b"O"
SMFIC_QUIT = b"Q"
SMFIC_RCPT = b"R"
SMFIC_DATA = b"T"
SMFIC_UNKNOWN = b"U"

# --- replies, milter to MTA -------------------------------------------------
SMFIR_ADDRCPT = b"+"
SMFIR_DELRCPT = b"-"
SMFIR_ADDRCPT_PAR = b"2"
SMFIR_SHUTDOWN = b"4"
SMFIR_ACCEPT = b"a"
SMFIR_REPLBODY = b"b"
SMFIR_CONTINUE = b"c"
SMFIR_DISCARD = b"d"
SMFIR_CHGFROM = b"e"
SMFIR_CONN_FAIL = b"f"
SMFIR_ADDHEADER = b"h"
SMFIR_INSHEADER = b"i"
SMFIR_SETSYMLIST = b"l"
SMFIR_CHGHEADER = b"m"
SMFIR_PROGRESS = b"p"
SMFIR_QUARANTINE = b"q"
SMFIR_REJECT = b"r"
SMFIR_SKIP = b"s"
SMFIR_TEMPFAIL = b"t"
SMFIR_REPLYCODE = b"y"

# --- actions the milter may take (SMFIF_*) ----------------------------------
SMFIF_ADDHDRS = 0x01
SMFIF_CHGBODY = 0x02
SMFIF_ADDRCPT = 0x04
SMFIF_DELRCPT = 0x08
SMFIF_CHGHDRS = 0x10
SMFIF_QUARANTINE = 0x20
SMFIF_CHGFROM = 0x40
SMFIF_ADDRCPT_PAR = 0x80
SMFIF_SETSYMLIST = 0x100

# --- protocol steps (SMFIP_*) -----------------------------------------------
SMFIP_NOCONNECT = 0x01
SMFIP_NOHELO = 0x02
SMFIP_NOMAIL = 0x04
SMFIP_NORCPT = 0x08
SMFIP_NOBODY = 0x10
SMFIP_NOHDRS = 0x20
SMFIP_NOEOH = 0x40
SMFIP_NR_HDR = 0x80
SMFIP_NOUNKNOWN = 0x100
SMFIP_NODATA = 0x200
SMFIP_SKIP = 0x400
SMFIP_RCPT_REJ = 0x800
SMFIP_NR_CONN = 0x1000
SMFIP_NR_HELO = 0x2000
SMFIP_NR_MAIL = 0x4000
SMFIP_NR_RCPT = 0x8000
SMFIP_NR_DATA = 0x10000
SMFIP_NR_UNKN = 0x20000
SMFIP_NR_EOH = 0x40000
SMFIP_NR_BODY = 0x80000
SMFIP_HDR_LEADSPC = 0x100000

# --- macro stages (SMFIM_*), as SETSYMLIST numbers them ---------------------
SMFIM_CONNECT = 0
SMFIM_HELO = 1
SMFIM_ENVFROM = 2
SMFIM_ENVRCPT = 3
SMFIM_DATA = 4
SMFIM_EOM = 5
SMFIM_EOH = 6

#: The protocol version we speak (Sendmail 8.14 and later, Postfix 2.6 and later).
PROTOCOL_VERSION = 6

#: The actions we let a milter take.  Not SMFIF_ADDRCPT, SMFIF_DELRCPT,
#: SMFIF_ADDRCPT_PAR or SMFIF_CHGFROM: txmail's policy hooks cannot change
#: the envelope, so a milter is never told it may (deliberate departure
#: from Postfix, which offers them).
ACTIONS_OFFERED = SMFIF_ADDHDRS | SMFIF_CHGBODY | SMFIF_CHGHDRS | SMFIF_QUARANTINE | SMFIF_SETSYMLIST

_NOSEND_V2 = (
    SMFIP_NOCONNECT | SMFIP_NOHELO | SMFIP_NOMAIL | SMFIP_NORCPT | SMFIP_NOBODY | SMFIP_NOHDRS | SMFIP_NOEOH
)
_NOREPLY = (
    SMFIP_NR_CONN
    | SMFIP_NR_HELO
    | SMFIP_NR_MAIL
    | SMFIP_NR_RCPT
    | SMFIP_NR_DATA
    | SMFIP_NR_UNKN
    | SMFIP_NR_HDR
    | SMFIP_NR_EOH
    | SMFIP_NR_BODY
)

#: The protocol steps a milter may ask us to leave out or leave unanswered,
#: and the extensions we support (SMFIR_SKIP, leading spaces in header
#: values).  Not SMFIP_RCPT_REJ: recipients the server refused are not sent.
PROTOCOL_OFFERED = _NOSEND_V2 | SMFIP_NOUNKNOWN | SMFIP_NODATA | SMFIP_SKIP | _NOREPLY | SMFIP_HDR_LEADSPC

#: What each older protocol version defines (Postfix's milter8_event_masks):
#: a milter speaking one gets nothing outside it.
_VERSION_PROTOCOL = {
    2: _NOSEND_V2 | SMFIP_NR_HDR,
    3: _NOSEND_V2 | SMFIP_NR_HDR | SMFIP_NOUNKNOWN,
    4: _NOSEND_V2 | SMFIP_NR_HDR | SMFIP_NOUNKNOWN | SMFIP_NODATA,
    5: _NOSEND_V2 | SMFIP_NR_HDR | SMFIP_NOUNKNOWN | SMFIP_NODATA,
    6: PROTOCOL_OFFERED,
}

#: The largest body chunk libmilter accepts by default (MILTER_CHUNK_SIZE).
MAX_BODY_CHUNK = 65535

#: The largest packet we accept from a milter.  libmilter sends at most a
#: 1 MiB chunk (SMFIP_MDS_1M); header fields and replies are far smaller.
MAX_PACKET = 1024 * 1024 + 64

#: The most octets of modifications (body chunks, header field edits,
#: quarantine reasons) accepted for one message.  They are kept until the
#: final reply, so without a bound a milter that keeps sending them grows
#: the process without end (each packet is bounded, not their number).
#: Each counts its data plus ``_MODIFICATION_COST``; the default leaves
#: room for a new body as large as the default message size limit (50 MiB).
MAX_MODIFICATIONS = 64 * 1024 * 1024

# What each modification counts beyond its data (the objects that hold it):
# an empty body chunk, which libmilter sends for an empty new body, is not free.
_MODIFICATION_COST = 128

#: The most header field edits (add, insert, change) accepted for one
#: message: applying a change looks through the whole header section
#: (:func:`txmail.milter.edits.apply_header_edits`), so the work grows with
#: the square of their number (20,000 edits, 320 KB from the milter, took
#: 40 seconds).  Milters add or change a handful.
MAX_HEADER_EDITS = 1000

# Which command each stage is, and its "don't send" and "no reply" bits.
_STEPS: dict[bytes, tuple[int, int]] = {
    SMFIC_CONNECT: (SMFIP_NOCONNECT, SMFIP_NR_CONN),
    SMFIC_HELO: (SMFIP_NOHELO, SMFIP_NR_HELO),
    SMFIC_MAIL: (SMFIP_NOMAIL, SMFIP_NR_MAIL),
    SMFIC_RCPT: (SMFIP_NORCPT, SMFIP_NR_RCPT),
    SMFIC_DATA: (SMFIP_NODATA, SMFIP_NR_DATA),
    SMFIC_HEADER: (SMFIP_NOHDRS, SMFIP_NR_HDR),
    SMFIC_EOH: (SMFIP_NOEOH, SMFIP_NR_EOH),
    SMFIC_BODY: (SMFIP_NOBODY, SMFIP_NR_BODY),
    SMFIC_BODYEOB: (0, 0),
}

# The macro stage of each command (what a SETSYMLIST list applies to).
_MACRO_STAGE = {
    SMFIC_CONNECT: SMFIM_CONNECT,
    SMFIC_HELO: SMFIM_HELO,
    SMFIC_MAIL: SMFIM_ENVFROM,
    SMFIC_RCPT: SMFIM_ENVRCPT,
    SMFIC_DATA: SMFIM_DATA,
    SMFIC_HEADER: SMFIM_EOH,  # Postfix sends the end-of-header macros with each field
    SMFIC_EOH: SMFIM_EOH,
    SMFIC_BODYEOB: SMFIM_EOM,
}

_COMMAND_NAMES = {
    SMFIC_ABORT: "abort",
    SMFIC_BODY: "body",
    SMFIC_CONNECT: "connect",
    SMFIC_MACRO: "macro",
    SMFIC_BODYEOB: "end of message",
    SMFIC_HELO: "helo",
    SMFIC_HEADER: "header",
    SMFIC_MAIL: "mail",
    SMFIC_EOH: "end of headers",
    SMFIC_OPTNEG: "negotiation",
    SMFIC_QUIT: "quit",
    SMFIC_RCPT: "rcpt",
    SMFIC_DATA: "data",
}


class MilterProtocolError(Exception):
    """The milter sent something the protocol does not allow (the text is for logs)."""


# --- packets ----------------------------------------------------------------


def encode_packet(command: bytes, data: bytes = b"") -> bytes:
    """One packet: length (4 octets, big-endian), *command* (one octet), *data*."""
    if len(command) != 1:
        raise ValueError("a milter command is one octet")
    return struct.pack("!I", len(data) + 1) + command + data


def _strings(*values: str | bytes) -> bytes:
    """NUL-terminated strings (UTF-8); a NUL inside one is refused."""
    out = []
    for value in values:
        raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
        if b"\x00" in raw:
            raise ValueError("NUL in a milter string")
        out.append(raw + b"\x00")
    return b"".join(out)


class PacketReader:
    """
    Splits a byte stream into ``(command, data)`` packets.

    Raises :class:`MilterProtocolError` on a zero length (no command octet)
    or a length over *max_packet*; after that the stream cannot be trusted
    and the reader refuses everything.
    """

    def __init__(self, max_packet: int = MAX_PACKET) -> None:
        self.max_packet = max_packet
        self._buffer = bytearray()
        self._broken: str | None = None

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        if self._broken is not None:
            raise MilterProtocolError(self._broken)
        self._buffer += data
        packets = []
        while len(self._buffer) >= 4:
            (length,) = struct.unpack_from("!I", self._buffer)
            if length < 1 or length > self.max_packet:
                self._broken = f"bad packet length {length}"
                raise MilterProtocolError(self._broken)
            if len(self._buffer) < 4 + length:
                break
            command = bytes(self._buffer[4:5])
            body = bytes(self._buffer[5 : 4 + length])
            del self._buffer[: 4 + length]
            packets.append((command, body))
        return packets

    @property
    def pending(self) -> int:
        """Octets received but not yet a whole packet."""
        return len(self._buffer)


class _Data:
    """A cursor over a packet's data, for parsing replies."""

    def __init__(self, what: str, data: bytes) -> None:
        self.what = what
        self.data = data
        self.pos = 0

    def uint32(self) -> int:
        if len(self.data) - self.pos < 4:
            raise MilterProtocolError(f"{self.what}: packet too short for a 32-bit number")
        (value,) = struct.unpack_from("!I", self.data, self.pos)
        self.pos += 4
        return int(value)

    def string(self) -> bytes:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise MilterProtocolError(f"{self.what}: string without its NUL terminator")
        value = self.data[self.pos : end]
        self.pos = end + 1
        return value

    def rest(self) -> bytes:
        value = self.data[self.pos :]
        self.pos = len(self.data)
        return value

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def end(self) -> None:
        if self.left:
            raise MilterProtocolError(f"{self.what}: {self.left} octets of unexpected data")


# --- replies ----------------------------------------------------------------


@dataclass(frozen=True)
class Negotiated:
    """
    The milter's answer to SMFIC_OPTNEG.

    Attributes:
        version: its protocol version.
        actions: the SMFIF_* actions it will take.
        protocol: the SMFIP_* bits it asked for, as the milter sent them.
        macros: for each SMFIM_* stage it named, the macro names it wants
            (``"j"``, ``"{auth_authen}"``).
    """

    version: int
    actions: int
    protocol: int
    macros: Mapping[int, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Progress:
    """SMFIR_PROGRESS: the milter is still working (the caller resets its timeout)."""


@dataclass(frozen=True)
class AddHeader:
    """SMFIR_ADDHEADER: append the field at the end of the header section."""

    name: bytes
    value: bytes


@dataclass(frozen=True)
class InsertHeader:
    """SMFIR_INSHEADER: insert the field before the *index*-th (0: at the top)."""

    index: int
    name: bytes
    value: bytes


@dataclass(frozen=True)
class ChangeHeader:
    """
    SMFIR_CHGHEADER: replace the *index*-th (1-based) field called *name*;
    an empty *value* deletes it.
    """

    index: int
    name: bytes
    value: bytes


@dataclass(frozen=True)
class ReplaceBody:
    """SMFIR_REPLBODY: one chunk of the new body (several packets make it whole)."""

    chunk: bytes


@dataclass(frozen=True)
class Quarantine:
    """SMFIR_QUARANTINE: hold the message, for *reason*."""

    reason: str


Modification = AddHeader | InsertHeader | ChangeHeader | ReplaceBody | Quarantine

#: Final replies, by command octet, to the action name of a Decision.
_FINAL = {
    SMFIR_ACCEPT: "accept",
    SMFIR_CONTINUE: "continue",
    SMFIR_REJECT: "reject",
    SMFIR_TEMPFAIL: "tempfail",
    SMFIR_DISCARD: "discard",
    SMFIR_REPLYCODE: "replycode",
    SMFIR_SKIP: "skip",
    SMFIR_SHUTDOWN: "shutdown",
    SMFIR_CONN_FAIL: "connfail",
}


@dataclass(frozen=True)
class Decision:
    """
    The milter's final reply to one command.

    Attributes:
        command: the command it answers (``SMFIC_*``).
        action: ``"accept"``, ``"continue"``, ``"reject"``, ``"tempfail"``,
            ``"discard"``, ``"replycode"``, ``"skip"``, ``"shutdown"`` or
            ``"connfail"``.
        text: for ``replycode``, the milter's SMTP reply (``"550 5.7.1
            Spam"``, possibly several lines joined by CRLF), else ``""``.
        modifications: for SMFIC_BODYEOB, the modifications that came
            before, in order.
    """

    command: bytes
    action: str
    text: str = ""
    modifications: tuple[Modification, ...] = ()


def parse_negotiation(data: bytes) -> Negotiated:
    """
    The data of the milter's SMFIC_OPTNEG reply: three 32-bit numbers,
    then any number of (32-bit stage, NUL-terminated space-separated macro
    names) pairs.  Unknown stages are ignored (as Postfix does).
    """
    cursor = _Data("negotiation", data)
    version = cursor.uint32()
    actions = cursor.uint32()
    protocol = cursor.uint32()
    macros: dict[int, tuple[str, ...]] = {}
    while cursor.left:
        stage = cursor.uint32()
        names = cursor.string().decode("ascii", "replace").split()
        if SMFIM_CONNECT <= stage <= SMFIM_EOH:
            macros[stage] = tuple(names)
    return Negotiated(version, actions, protocol, macros)


def _header_reply(what: str, data: bytes, indexed: bool) -> tuple[int, bytes, bytes]:
    cursor = _Data(what, data)
    index = cursor.uint32() if indexed else 0
    name = cursor.string()
    value = cursor.string()
    cursor.end()
    if not name or any(c <= 32 or c >= 127 or c == 58 for c in name):
        raise MilterProtocolError(f"{what}: invalid header field name {name[:80]!r}")
    return index, name, value


def parse_reply(command: bytes, data: bytes) -> Progress | Modification | tuple[str, str] | bytes:
    """
    Parse one reply packet.

    Returns:
        :class:`Progress`; a modification (:class:`AddHeader`,
        :class:`InsertHeader`, :class:`ChangeHeader`, :class:`ReplaceBody`,
        :class:`Quarantine`); ``(action, text)`` for a final reply; or the
        command octet itself for envelope changes we never negotiate
        (``SMFIR_ADDRCPT``, ``SMFIR_DELRCPT``, ``SMFIR_ADDRCPT_PAR``,
        ``SMFIR_CHGFROM``), which the caller refuses.

    Raises:
        MilterProtocolError: an unknown reply or malformed data.
    """
    if command == SMFIR_PROGRESS:
        _Data("progress", data).end()
        return Progress()
    if command in _FINAL:
        action = _FINAL[command]
        if command != SMFIR_REPLYCODE:
            _Data(action, data).end()
            return (action, "")
        cursor = _Data("replycode", data)
        text = cursor.string()
        cursor.end()
        try:
            return (action, text.decode("utf-8"))
        except UnicodeDecodeError:
            raise MilterProtocolError("replycode: not UTF-8") from None
    if command == SMFIR_ADDHEADER:
        _, name, value = _header_reply("addheader", data, indexed=False)
        return AddHeader(name, value)
    if command == SMFIR_INSHEADER:
        index, name, value = _header_reply("insheader", data, indexed=True)
        return InsertHeader(index, name, value)
    if command == SMFIR_CHGHEADER:
        index, name, value = _header_reply("chgheader", data, indexed=True)
        return ChangeHeader(index, name, value)
    if command == SMFIR_REPLBODY:
        return ReplaceBody(data)
    if command == SMFIR_QUARANTINE:
        cursor = _Data("quarantine", data)
        reason = cursor.string()
        cursor.end()
        return Quarantine(reason.decode("utf-8", "replace"))
    if command in (SMFIR_ADDRCPT, SMFIR_DELRCPT, SMFIR_ADDRCPT_PAR, SMFIR_CHGFROM):
        return command
    raise MilterProtocolError(f"unknown reply {command!r}")


# --- the client session -----------------------------------------------------


def _macro_key(name: str) -> str:
    """``"{auth_authen}"`` and ``"auth_authen"`` name the same macro."""
    return name[1:-1] if name.startswith("{") and name.endswith("}") else name


def _macro_name(name: str) -> str:
    """The name as sent: one character bare, longer ones in braces (as Sendmail does)."""
    key = _macro_key(name)
    return key if len(key) == 1 else "{" + key + "}"


class MilterClient:
    """
    One connection to a milter, MTA side, without I/O.

    Call :meth:`negotiate` first, send its :meth:`data_to_send`, and feed
    the milter's bytes to :meth:`receive_data` until :meth:`next_event`
    gives :class:`Negotiated`.  Then each stage method queues its command
    and returns ``True`` when a reply is awaited (feed bytes until a
    :class:`Decision` comes), ``False`` when the milter asked not to get
    the command or not to answer it.  Only one command awaits a reply at a
    time: a stage method called meanwhile raises ``RuntimeError``.

    Args:
        actions: the SMFIF_* actions offered.
        protocol: the SMFIP_* steps and extensions offered.
        max_packet: the largest packet accepted from the milter.
        max_modifications: the most octets of modifications for one
            message (see :data:`MAX_MODIFICATIONS`).
        max_header_edits: the most header field edits for one message.
    """

    def __init__(
        self,
        *,
        actions: int = ACTIONS_OFFERED,
        protocol: int = PROTOCOL_OFFERED,
        max_packet: int = MAX_PACKET,
        max_modifications: int = MAX_MODIFICATIONS,
        max_header_edits: int = MAX_HEADER_EDITS,
    ) -> None:
        self.actions_offered = actions
        self.protocol_offered = protocol
        self.max_modifications = max_modifications
        self.max_header_edits = max_header_edits
        self._reader = PacketReader(max_packet)
        self._out: list[bytes] = []
        self._events: deque[Negotiated | Progress | Decision] = deque()
        self._awaiting: bytes | None = None
        self._modifications: list[Modification] = []
        self._modified_size = 0
        self._header_edits = 0
        #: What was negotiated (``None`` before).
        self.negotiated: Negotiated | None = None
        #: The SMFIF_* actions the milter may take (those it asked for that we offered).
        self.actions = 0
        #: The SMFIP_* bits in force (the milter's, within what we offered
        #: and what its version defines).
        self.protocol = 0
        self._macro_lists: dict[int, frozenset[str]] | None = None
        self._skipping_body = False

    # -- output and input --

    def data_to_send(self) -> bytes:
        """The bytes to write to the milter (then forgotten)."""
        out, self._out = b"".join(self._out), []
        return out

    @property
    def awaiting(self) -> bytes | None:
        """The command (``SMFIC_*``) whose reply is awaited, or ``None``."""
        return self._awaiting

    def receive_data(self, data: bytes) -> None:
        """
        Parse what the milter sent; events become available from :meth:`next_event`.

        Raises:
            MilterProtocolError: a garbled packet, or a reply that does not
                fit (nothing was awaited, an action not negotiated, a
                modification before the end of the message...).
        """
        for command, body in self._reader.feed(data):
            self._reply(command, body)

    def next_event(self) -> Negotiated | Progress | Decision | None:
        """The next event, or ``None``."""
        return self._events.popleft() if self._events else None

    def _reply(self, command: bytes, data: bytes) -> None:
        awaiting = self._awaiting
        if awaiting is None:
            raise MilterProtocolError(f"unexpected reply {command!r}: no command awaits one")
        what = _COMMAND_NAMES.get(awaiting, repr(awaiting))
        if awaiting == SMFIC_OPTNEG:
            if command != SMFIC_OPTNEG:
                raise MilterProtocolError(f"reply {command!r} to the negotiation")
            self._negotiated(parse_negotiation(data))
            return
        reply = parse_reply(command, data)
        if isinstance(reply, Progress):
            self._events.append(reply)
            return
        if isinstance(reply, bytes):
            raise MilterProtocolError(f"envelope change {reply!r} after {what}: it was not negotiated")
        if not isinstance(reply, tuple):
            self._modification(reply, what, len(data))
            return
        action, text = reply
        if action == "skip" and (awaiting != SMFIC_BODY or not self.protocol & SMFIP_SKIP):
            raise MilterProtocolError(f"skip after {what}")
        if action == "discard" and awaiting in (SMFIC_CONNECT, SMFIC_HELO):
            # Postfix: "DISCARD action is not allowed for connect or helo".
            raise MilterProtocolError(f"discard after {what}")
        if action == "skip":
            self._skipping_body = True
        modifications = tuple(self._modifications)
        self._modifications = []
        self._modified_size = self._header_edits = 0
        self._awaiting = None
        self._events.append(Decision(awaiting, action, text, modifications))

    def _modification(self, reply: Modification, what: str, size: int) -> None:
        if self._awaiting != SMFIC_BODYEOB:
            raise MilterProtocolError(f"modification {type(reply).__name__} after {what}")
        needed = {
            AddHeader: SMFIF_ADDHDRS,
            InsertHeader: SMFIF_ADDHDRS,
            ChangeHeader: SMFIF_CHGHDRS,
            ReplaceBody: SMFIF_CHGBODY,
            Quarantine: SMFIF_QUARANTINE,
        }[type(reply)]
        if not self.actions & needed:
            raise MilterProtocolError(f"modification {type(reply).__name__} was not negotiated")
        self._modified_size += size + _MODIFICATION_COST
        if self._modified_size > self.max_modifications:
            raise MilterProtocolError(
                f"over {self.max_modifications} octets of modifications for one message"
            )
        if isinstance(reply, AddHeader | InsertHeader | ChangeHeader):
            self._header_edits += 1
            if self._header_edits > self.max_header_edits:
                raise MilterProtocolError(f"over {self.max_header_edits} header field edits for one message")
        self._modifications.append(reply)

    def _negotiated(self, answer: Negotiated) -> None:
        if not 2 <= answer.version <= PROTOCOL_VERSION:
            raise MilterProtocolError(f"milter protocol version {answer.version} (we speak 2 to 6)")
        # Actions we did not offer are dropped (rspamd asks for SMFIF_ADDRCPT
        # and SMFIF_DELRCPT whatever the MTA offers): the milter never gets
        # to use them, a reply that does is refused (Postfix, which offers
        # them, fails the negotiation instead when a milter asks for more).
        # Bits we did not offer (SMFIP_RCPT_REJ, SMFIP_MDS_*) are ignored,
        # as Postfix does; those outside the milter's version are cleared.
        self.protocol = answer.protocol & self.protocol_offered & _VERSION_PROTOCOL[answer.version]
        if answer.version < 4:
            self.protocol |= SMFIP_NODATA  # no SMFIC_DATA before version 4
        self.actions = answer.actions & self.actions_offered
        if answer.macros and self.actions & SMFIF_SETSYMLIST:
            # Postfix: once a milter names lists, stages it leaves out get none.
            self._macro_lists = {
                stage: frozenset(_macro_key(n) for n in names) for stage, names in answer.macros.items()
            }
        self.negotiated = answer
        self._awaiting = None
        self._events.append(answer)

    # -- commands --

    def _check_idle(self) -> None:
        if self._awaiting is not None:
            raise RuntimeError(f"a reply to {_COMMAND_NAMES.get(self._awaiting)} is still awaited")

    def _ready(self) -> None:
        self._check_idle()
        if self.negotiated is None:
            raise RuntimeError("negotiate first")

    def negotiate(self) -> bool:
        """Queue SMFIC_OPTNEG (version 6 and what we offer)."""
        self._check_idle()
        self._out.append(
            encode_packet(
                SMFIC_OPTNEG,
                struct.pack("!III", PROTOCOL_VERSION, self.actions_offered, self.protocol_offered),
            )
        )
        self._awaiting = SMFIC_OPTNEG
        return True

    def wants(self, command: bytes) -> bool:
        """Whether *command* is sent at all (the milter did not ask to leave it out)."""
        skip, _ = _STEPS[command]
        return not self.protocol & skip

    def _macros(self, command: bytes, macros: Mapping[str, str] | None) -> None:
        if not macros:
            return
        stage = _MACRO_STAGE.get(command)
        wanted = (
            None if self._macro_lists is None or stage is None else self._macro_lists.get(stage, frozenset())
        )
        pairs = []
        for name, value in macros.items():
            if wanted is not None and _macro_key(name) not in wanted:
                continue
            pairs.append(_strings(_macro_name(name), value))
        if pairs:
            self._out.append(encode_packet(SMFIC_MACRO, command + b"".join(pairs)))

    def _command(self, command: bytes, data: bytes, macros: Mapping[str, str] | None) -> bool:
        self._ready()
        skip, no_reply = _STEPS[command]
        # Postfix sends a stage's macros even when the stage itself is left out.
        self._macros(command, macros)
        if self.protocol & skip:
            return False
        self._out.append(encode_packet(command, data))
        if self.protocol & no_reply:
            return False
        self._awaiting = command
        return True

    def connect(
        self,
        hostname: str,
        family: str,
        port: int = 0,
        address: str = "",
        macros: Mapping[str, str] | None = None,
    ) -> bool:
        """
        SMFIC_CONNECT: the client's *hostname* (its name, or ``[address]``),
        *family* ``"4"``, ``"6"``, ``"L"`` (a UNIX socket) or ``"U"``
        (unknown: no port or address follow).
        """
        if family not in ("4", "6", "L", "U"):
            raise ValueError(f"bad address family {family!r}")
        data = _strings(hostname) + family.encode("ascii")
        if family != "U":
            data += struct.pack("!H", port) + _strings(address)
        return self._command(SMFIC_CONNECT, data, macros)

    def helo(self, name: str, macros: Mapping[str, str] | None = None) -> bool:
        """SMFIC_HELO with the name the client greeted with."""
        return self._command(SMFIC_HELO, _strings(name), macros)

    def mail(self, args: Sequence[str], macros: Mapping[str, str] | None = None) -> bool:
        """SMFIC_MAIL: ``["<sender>", "SIZE=123", ...]``; starts a message."""
        self._skipping_body = False
        return self._command(SMFIC_MAIL, _strings(*args), macros)

    def rcpt(self, args: Sequence[str], macros: Mapping[str, str] | None = None) -> bool:
        """SMFIC_RCPT: ``["<recipient>", "NOTIFY=NEVER", ...]``."""
        return self._command(SMFIC_RCPT, _strings(*args), macros)

    def data(self, macros: Mapping[str, str] | None = None) -> bool:
        """SMFIC_DATA."""
        return self._command(SMFIC_DATA, b"", macros)

    def header(self, name: bytes, value: bytes, macros: Mapping[str, str] | None = None) -> bool:
        """SMFIC_HEADER: one field (*value* as the milter expects it, see :func:`header_fields`)."""
        return self._command(SMFIC_HEADER, _strings(name, value), macros)

    def end_of_headers(self, macros: Mapping[str, str] | None = None) -> bool:
        """SMFIC_EOH."""
        return self._command(SMFIC_EOH, b"", macros)

    def body(self, chunk: bytes) -> bool:
        """
        SMFIC_BODY: one chunk of at most :data:`MAX_BODY_CHUNK` octets.
        After the milter answered ``skip``, nothing is sent (``False``).
        """
        if len(chunk) > MAX_BODY_CHUNK:
            raise ValueError(f"a body chunk is at most {MAX_BODY_CHUNK} octets")
        if self._skipping_body:
            self._ready()
            return False
        return self._command(SMFIC_BODY, chunk, None)

    def end_of_message(self, macros: Mapping[str, str] | None = None) -> bool:
        """SMFIC_BODYEOB: always answered, after any modifications."""
        self._skipping_body = False
        return self._command(SMFIC_BODYEOB, b"", macros)

    def abort(self) -> None:
        """SMFIC_ABORT: forget the message in progress (never answered)."""
        self._ready()
        self._skipping_body = False
        self._out.append(encode_packet(SMFIC_ABORT))

    def quit(self) -> None:
        """SMFIC_QUIT: end the session (never answered); the connection may be closed after it."""
        self._awaiting = None
        self._out.append(encode_packet(SMFIC_QUIT))


# --- helpers for the caller -------------------------------------------------


def header_fields(section: bytes, *, leading_space: bool = False) -> list[tuple[bytes, bytes]]:
    """
    The fields of a header section (CRLF line ends) as a milter gets them:
    ``(name, value)`` with the value's folding line breaks as bare LF (as
    Sendmail and Postfix send them) and without the field's final CRLF.
    Without *leading_space* (SMFIP_HDR_LEADSPC), one space after the colon
    is left out, as Sendmail does.  Lines that are not fields (no colon)
    are left out.
    """
    fields: list[tuple[bytes, bytes]] = []
    for raw in split_fields(section):
        name, sep, value = raw.partition(b":")
        if not sep:
            continue
        name = name.rstrip(b" \t")
        value = value.rstrip(b"\r\n").replace(b"\r\n", b"\n")
        if not leading_space and value.startswith(b" "):
            value = value[1:]
        fields.append((name, value))
    return fields


def split_fields(section: bytes) -> list[bytes]:
    """A header section split into its fields, each with its continuation lines and CRLF."""
    fields: list[bytes] = []
    for line in section.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields


def body_chunks(body: bytes, size: int = MAX_BODY_CHUNK) -> Iterable[bytes]:
    """*body* in chunks of at most *size* octets (none for an empty body)."""
    for start in range(0, len(body), size):
        yield body[start : start + size]
