"""
SMTP command-argument grammar (RFC 5321 section 4.1.2, RFC 6531 section 3.3).

Each public parse function is named after the ABNF rule it parses and quotes
that rule in its docstring (imap-codec style).  Functions take ``str``
(command lines are decoded as UTF-8 first, RFC 6531), parse the *whole*
string and raise :class:`GrammarError` otherwise.

Implementation notes:

* Paths are parsed by a small recursive-descent cursor, not by splitting on
  spaces or ``>``: a quoted local part may hold both.
* A source route (``<@a,@b:u@d>``) is accepted and dropped, as RFC 5321
  section 4.1.1.3 allows ("MUST accept ... and MAY ignore"): the mailbox
  ``u@d`` is what the router sees, so it checks ``d``.
* A quoted local part whose content is a valid Dot-string is unquoted
  (``"alice"@x`` is ``alice@x``, RFC 5321 section 4.1.2 says the quoted form
  SHOULD NOT be used when not needed); :meth:`Mailbox.__str__` re-quotes only
  when needed, so one mailbox has one spelling.
* Policy about *which* valid addresses to refuse (``%``, ``!``, quoted
  ``@``, address literals) lives in the session, not here; see
  :meth:`Mailbox.has_routing_characters`.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

__all__ = [
    "MAX_PATH_LENGTH",
    "GrammarError",
    "Mailbox",
    "ParamSyntaxError",
    "PathSyntaxError",
    "address_literal",
    "bdat_argument",
    "domain",
    "esmtp_params",
    "forward_path",
    "helo_name",
    "is_sendable_mailbox",
    "local_part",
    "mail_from_argument",
    "mailbox",
    "rcpt_to_argument",
    "reverse_path",
]

#: RFC 5321 section 4.5.3.1.3: "The maximum total length of a reverse-path or
#: forward-path is 256 octets (including the punctuation and element separators)."
MAX_PATH_LENGTH = 256

_ALPHA = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DIGIT = frozenset("0123456789")
_ATEXT = _ALPHA | _DIGIT | frozenset("!#$%&'*+-/=?^_`{|}~")


class GrammarError(ValueError):
    """The text does not match the grammar rule (the message says where)."""


class PathSyntaxError(GrammarError):
    """A reverse-path or forward-path is malformed."""


class ParamSyntaxError(GrammarError):
    """The ESMTP parameters are malformed."""


def _is_atext(c: str) -> bool:
    # RFC 6531 section 3.3: atext =/ UTF8-non-ascii
    return c in _ATEXT or ord(c) > 0x7F


def _is_qtext(c: str) -> bool:
    # qtextSMTP = %d32-33 / %d35-91 / %d93-126 ; RFC 6531: =/ UTF8-non-ascii
    o = ord(c)
    return o in (32, 33) or 35 <= o <= 91 or 93 <= o <= 126 or o > 0x7F


def _is_dot_string(text: str) -> bool:
    """Dot-string = Atom *("." Atom)"""
    return bool(text) and all(atom and all(_is_atext(c) for c in atom) for atom in text.split("."))


@dataclass(frozen=True, slots=True)
class Mailbox:
    """
    A parsed ``Mailbox`` (RFC 5321 section 4.1.2).

    Attributes:
        local_part: the local part with quoting removed (``"a b"`` gives
            ``a b``).
        domain: the domain as given, or an address literal with its brackets
            (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``).  ``""`` only for the
            special ``<Postmaster>`` forward-path (RFC 5321 section 4.5.1).
    """

    local_part: str
    domain: str

    @property
    def is_address_literal(self) -> bool:
        """Whether the domain is an address literal (``[...]``)."""
        return self.domain.startswith("[")

    @property
    def is_ascii(self) -> bool:
        """Whether the address is all ASCII (else it needs SMTPUTF8, RFC 6531)."""
        return str(self).isascii()

    @property
    def needs_quoting(self) -> bool:
        """Whether the local part must be written as a Quoted-string."""
        return not _is_dot_string(self.local_part)

    def has_routing_characters(self) -> bool:
        """
        Whether the local part holds ``%``, ``!`` or ``@``: the old
        sender-specified routing forms (``u%remote@local``, ``remote!u@local``,
        ``"u@remote"@local``; RFC 5321 appendix C and section 3.6.1 deprecate them).
        """
        return any(c in self.local_part for c in "%!@")

    def __str__(self) -> str:
        local = self.local_part
        if self.needs_quoting:
            local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{local}@{self.domain}" if self.domain else local


_SURROGATE = re.compile("[\ud800-\udfff]")


class _Cursor:
    """A position in a string; each method consumes one grammar rule."""

    def __init__(self, text: str, error: type[GrammarError] = GrammarError) -> None:
        if _SURROGATE.search(text) is not None:
            # Not text (str can hold them; UTF-8 cannot): refuse rather than fail later.
            raise error("a lone surrogate is not a character")
        self.text = text
        self.pos = 0
        self.error = error

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def fail(self, what: str) -> GrammarError:
        return self.error(f"expected {what} at offset {self.pos}")

    def expect(self, literal: str) -> None:
        if self.text[self.pos : self.pos + len(literal)].lower() != literal.lower():
            raise self.fail(repr(literal))
        self.pos += len(literal)

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def end(self) -> None:
        if not self.at_end():
            raise self.fail("end of text")

    def sub_domain(self) -> str:
        # sub-domain = Let-dig [Ldh-str] ; Ldh-str = *( ALPHA / DIGIT / "-" ) Let-dig
        # RFC 6531: sub-domain =/ U-label (non-ASCII letters allowed)
        start = self.pos
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c in _ALPHA or c in _DIGIT or c == "-" or ord(c) > 0x7F:
                self.pos += 1
            else:
                break
        label = self.text[start : self.pos]
        if not label or label[0] == "-" or label[-1] == "-":
            self.pos = start
            raise self.fail("a domain label")
        if len(label.encode("utf-8")) > 63:
            raise self.fail("a label of at most 63 octets")
        return label

    def domain(self) -> str:
        # Domain = sub-domain *("." sub-domain)
        start = self.pos
        self.sub_domain()
        while self.peek() == "." and self.pos + 1 < len(self.text):
            self.pos += 1
            self.sub_domain()
        value = self.text[start : self.pos]
        if len(value.encode("utf-8")) > 255:  # RFC 5321 section 4.5.3.1.2
            raise self.fail("a domain of at most 255 octets")
        return value

    def address_literal(self) -> str:
        self.expect("[")
        close = self.text.find("]", self.pos)
        if close < 0:
            raise self.fail("']'")
        inner = self.text[self.pos : close]
        if inner[:5].lower() == "ipv6:" and "%" not in inner:  # no scope ids
            try:
                ipaddress.IPv6Address(inner[5:])
            except ValueError:
                raise self.fail("an IPv6 address") from None
            inner = "IPv6:" + inner[5:]
        else:
            try:
                ipaddress.IPv4Address(inner)
            except ValueError:
                # General-address-literal: no other tags are standardised.
                raise self.fail("an IPv4 address or IPv6: literal") from None
        self.pos = close + 1
        return f"[{inner}]"

    def local_part(self) -> str:
        # Local-part = Dot-string / Quoted-string
        if self.peek() == '"':
            return self.quoted_string()
        start = self.pos
        while self.pos < len(self.text) and (_is_atext(self.text[self.pos]) or self.text[self.pos] == "."):
            self.pos += 1
        value = self.text[start : self.pos]
        if not _is_dot_string(value):
            self.pos = start
            raise self.fail("a Dot-string local part")
        return value

    def quoted_string(self) -> str:
        # Quoted-string = DQUOTE *QcontentSMTP DQUOTE
        # QcontentSMTP = qtextSMTP / quoted-pairSMTP ; quoted-pairSMTP = %d92 %d32-126
        self.expect('"')
        out: list[str] = []
        while True:
            c = self.peek()
            if c == "":
                raise self.fail("a closing quote")
            if c == '"':
                self.pos += 1
                return "".join(out)
            if c == "\\":
                nxt = self.text[self.pos + 1 : self.pos + 2]
                if not nxt or not 32 <= ord(nxt) <= 126:
                    raise self.fail("a quoted pair")
                out.append(nxt)
                self.pos += 2
                continue
            if not _is_qtext(c):
                raise self.fail("qtextSMTP")
            out.append(c)
            self.pos += 1

    def mailbox(self) -> Mailbox:
        # Mailbox = Local-part "@" ( Domain / address-literal )
        local = self.local_part()
        self.expect("@")
        dom = self.address_literal() if self.peek() == "[" else self.domain()
        return Mailbox(local, dom)

    def adl(self) -> None:
        # A-d-l = At-domain *( "," At-domain ) ; At-domain = "@" Domain
        self.expect("@")
        self.domain()
        while self.peek() == ",":
            self.pos += 1
            self.expect("@")
            self.domain()

    def path(self) -> Mailbox:
        # Path = "<" [ A-d-l ":" ] Mailbox ">"
        start = self.pos
        self.expect("<")
        if self.peek() == "@":
            self.adl()
            self.expect(":")
        box = self.mailbox()
        self.expect(">")
        if len(self.text[start : self.pos].encode("utf-8")) > MAX_PATH_LENGTH:
            raise self.fail(f"a path of at most {MAX_PATH_LENGTH} octets")
        return box


def domain(text: str) -> str:
    """
    Parse a domain name.

    ABNF (RFC 5321 section 4.1.2, RFC 6531 section 3.3)::

        Domain     = sub-domain *("." sub-domain)
        sub-domain = Let-dig [Ldh-str]
        sub-domain =/ U-label
        Let-dig    = ALPHA / DIGIT
        Ldh-str    = *( ALPHA / DIGIT / "-" ) Let-dig

    Returns:
        the domain as given (no trailing dot is allowed).
    """
    c = _Cursor(text)
    value = c.domain()
    c.end()
    return value


def address_literal(text: str) -> str:
    """
    Parse an address literal.

    ABNF (RFC 5321 section 4.1.3)::

        address-literal  = "[" ( IPv4-address-literal /
                                 IPv6-address-literal /
                                 General-address-literal ) "]"
        IPv4-address-literal  = Snum 3("."  Snum)
        IPv6-address-literal  = "IPv6:" IPv6-addr

    General-address-literal is refused: no tag other than ``IPv6`` is
    standardised.

    Returns:
        the literal with brackets, the ``IPv6:`` tag spelled canonically.
    """
    c = _Cursor(text)
    value = c.address_literal()
    c.end()
    return value


def local_part(text: str) -> str:
    """
    Parse a local part and return it without quoting.

    ABNF (RFC 5321 section 4.1.2, RFC 6531 section 3.3)::

        Local-part     = Dot-string / Quoted-string
        Dot-string     = Atom *("."  Atom)
        Atom           = 1*atext
        atext          =/ UTF8-non-ascii
        Quoted-string  = DQUOTE *QcontentSMTP DQUOTE
        QcontentSMTP   = qtextSMTP / quoted-pairSMTP
        quoted-pairSMTP  = %d92 %d32-126
        qtextSMTP      = %d32-33 / %d35-91 / %d93-126
        qtextSMTP      =/ UTF8-non-ascii
    """
    c = _Cursor(text)
    value = c.local_part()
    c.end()
    return value


def mailbox(text: str) -> Mailbox:
    """
    Parse a mailbox.

    ABNF (RFC 5321 section 4.1.2)::

        Mailbox        = Local-part "@" ( Domain / address-literal )
    """
    c = _Cursor(text)
    value = c.mailbox()
    c.end()
    return value


#: The longest local part, in octets (RFC 5321 section 4.5.3.1.1).
MAX_LOCAL_PART = 64


def is_sendable_mailbox(text: str) -> bool:
    """
    Whether *text* is a ``Mailbox`` (SMTPUTF8's UTF-8 allowed) within the
    lengths of RFC 5321 section 4.5.3.1: what may go into a MAIL FROM, an
    RCPT TO or a header field naming it, from a source that is not an SMTP
    command line (a JMAP envelope, a TLS report address a domain
    publishes).  A line end, a space, ``<>`` or a parameter in it is not.
    """
    try:
        parsed = mailbox(text)
    except GrammarError:
        return False
    return len(parsed.local_part.encode("utf-8")) <= MAX_LOCAL_PART


def reverse_path(text: str) -> Mailbox | None:
    """
    Parse a reverse-path; ``None`` is the null path ``<>``.

    ABNF (RFC 5321 section 4.1.2)::

        Reverse-path   = Path / "<>"
        Path           = "<" [ A-d-l ":" ] Mailbox ">"
        A-d-l          = At-domain *( "," At-domain )
        At-domain      = "@" Domain

    The source route (A-d-l) is dropped (RFC 5321 section 4.1.1.3).

    Raises:
        PathSyntaxError: *text* is not a reverse-path.
    """
    c = _Cursor(text, PathSyntaxError)
    value = _reverse_path(c)
    c.end()
    return value


def _reverse_path(c: _Cursor) -> Mailbox | None:
    if c.text[c.pos : c.pos + 2] == "<>":
        c.pos += 2
        return None
    return c.path()


def forward_path(text: str) -> Mailbox:
    """
    Parse a forward-path.

    ABNF (RFC 5321 section 4.1.2 and 4.1.1.3)::

        Forward-path   = Path
        Recipient      = "<Postmaster@" Domain ">" / "<Postmaster>" / Forward-path

    ``<Postmaster>`` (any case) gives ``Mailbox("Postmaster", "")``
    (RFC 5321 section 4.5.1: it MUST be accepted without a domain).

    Raises:
        PathSyntaxError: *text* is not a forward-path.
    """
    c = _Cursor(text, PathSyntaxError)
    value = _forward_path(c)
    c.end()
    return value


def _forward_path(c: _Cursor) -> Mailbox:
    if c.text[c.pos : c.pos + 12].lower() == "<postmaster>":
        c.pos += 12
        return Mailbox("Postmaster", "")
    return c.path()


def esmtp_params(text: str) -> dict[str, str | None]:
    """
    Parse ESMTP parameters into a dict with upper-cased keywords.

    ABNF (RFC 5321 section 4.1.2, RFC 6531 section 3.3)::

        Mail-parameters  = esmtp-param *(SP esmtp-param)
        esmtp-param    = esmtp-keyword ["=" esmtp-value]
        esmtp-keyword  = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
        esmtp-value    = 1*(%d33-60 / %d62-126)
        esmtp-value    =/ UTF8-non-ascii

    A keyword without a value maps to ``None``.  Several spaces between
    parameters are tolerated; a repeated keyword is an error.

    Raises:
        ParamSyntaxError: the text is not a parameter list.
    """
    params: dict[str, str | None] = {}
    for word in text.split(" "):
        if not word:
            continue
        keyword, eq, value = word.partition("=")
        if not keyword or keyword[0] not in _ALPHA | _DIGIT:
            raise ParamSyntaxError(f"bad esmtp-keyword {keyword!r}")
        if any(ch not in _ALPHA | _DIGIT and ch != "-" for ch in keyword):
            raise ParamSyntaxError(f"bad esmtp-keyword {keyword!r}")
        if eq and (
            not value or any(not (33 <= ord(ch) <= 126 or ord(ch) > 0x7F) or ch == "=" for ch in value)
        ):
            raise ParamSyntaxError(f"bad esmtp-value for {keyword!r}")
        key = keyword.upper()
        if key in params:
            raise ParamSyntaxError(f"repeated parameter {key}")
        params[key] = value if eq else None
    return params


def _params_after_path(c: _Cursor) -> dict[str, str | None]:
    rest = c.text[c.pos :]
    if not rest:
        return {}
    if rest[0] != " ":
        raise PathSyntaxError(f"unexpected text after path at offset {c.pos}")
    return esmtp_params(rest)


def mail_from_argument(text: str) -> tuple[Mailbox | None, dict[str, str | None]]:
    """
    Parse what follows ``MAIL `` on a MAIL command line.

    ABNF (RFC 5321 section 4.1.1.2)::

        mail = "MAIL FROM:" Reverse-path [SP Mail-parameters] CRLF

    ``FROM:`` is matched case-insensitively.  Spaces after the colon are
    tolerated (a common client error; RFC 5321 section 4.1.2 forbids it
    but nothing is ambiguous about it).

    Raises:
        PathSyntaxError: the reverse-path is malformed.
        ParamSyntaxError: the parameters are malformed.
    """
    c = _Cursor(text, PathSyntaxError)
    c.expect("FROM:")
    while c.peek() == " ":
        c.pos += 1
    path = _reverse_path(c)
    return path, _params_after_path(c)


def rcpt_to_argument(text: str) -> tuple[Mailbox, dict[str, str | None]]:
    """
    Parse what follows ``RCPT `` on a RCPT command line.

    ABNF (RFC 5321 section 4.1.1.3)::

        rcpt = "RCPT TO:" ( "<Postmaster@" Domain ">" / "<Postmaster>" /
                            Forward-path ) [SP Rcpt-parameters] CRLF

    Raises:
        PathSyntaxError: the forward-path is malformed.
        ParamSyntaxError: the parameters are malformed.
    """
    c = _Cursor(text, PathSyntaxError)
    c.expect("TO:")
    while c.peek() == " ":
        c.pos += 1
    path = _forward_path(c)
    return path, _params_after_path(c)


def helo_name(text: str) -> str:
    """
    Parse the argument of EHLO or HELO.

    ABNF (RFC 5321 section 4.1.1.1)::

        ehlo = "EHLO" SP ( Domain / address-literal ) CRLF
        helo = "HELO" SP Domain CRLF

    Deviation: any one word of visible ASCII is accepted, because many
    clients send names that are not domains (``my_pc``); Postfix accepts
    them by default too.  The name only ever appears in a ``Received:``
    field, where visible ASCII without spaces is safe.

    Raises:
        GrammarError: empty, several words, or other characters.
    """
    if not text or any(not 33 <= ord(ch) <= 126 for ch in text):
        raise GrammarError("EHLO/HELO needs one name of visible ASCII")
    return text


def bdat_argument(text: str) -> tuple[int, bool]:
    """
    Parse the argument of BDAT.

    ABNF (RFC 3030 section 2)::

        bdat-cmd   ::= "BDAT" SP chunk-size [ SP end-marker ] CR LF
        chunk-size ::= 1*DIGIT
        end-marker ::= "LAST"

    Returns:
        ``(chunk size, last)``.

    Raises:
        GrammarError: the argument does not match.
    """
    words = text.split(" ")
    if not 1 <= len(words) <= 2 or not words[0] or not all(ch in _DIGIT for ch in words[0]):
        raise GrammarError("BDAT needs a chunk size")
    if len(words) == 2 and words[1].upper() != "LAST":
        raise GrammarError("BDAT end marker must be LAST")
    return int(words[0]), len(words) == 2


# -- RFC 3461 section 4: xtext (ENVID, ORCPT) ---------------------------------

_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")


def xtext_decode(text: str) -> str | None:
    """
    Decode RFC 3461 section 4 xtext; ``None`` when *text* is not xtext::

        xtext   = *( xchar / hexchar )
        xchar   = any ASCII CHAR between "!" (33) and "~" (126) inclusive,
                  except for "+" and "="
        hexchar = ASCII "+" immediately followed by two upper case
                  hexadecimal digits

    The ``+XX`` octets are read as UTF-8 (invalid sequences replaced).
    """
    if _XTEXT.fullmatch(text) is None:
        return None
    if "+" not in text:
        return text
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "+":
            out.append(int(text[i + 1 : i + 3], 16))
            i += 3
        else:
            out += text[i].encode("ascii")
            i += 1
    return out.decode("utf-8", "replace")


def xtext_encode(text: str) -> str:
    """
    Encode *text* as xtext: ``"+"``, ``"="``, controls, space and non-ASCII
    become ``+XX`` (UTF-8 octets).
    """
    out = []
    for b in text.encode("utf-8"):
        if 0x21 <= b <= 0x7E and b not in (0x2B, 0x3D):
            out.append(chr(b))
        else:
            out.append(f"+{b:02X}")
    return "".join(out)
