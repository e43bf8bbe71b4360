"""
The Authentication-Results header field (RFC 8601): written by us, read
from a trusted ARC sealer, and removed when a message arrives claiming it
was written by us.

Theory of operation
===================

A receiver records what it made of a message's authentication in one
``Authentication-Results`` field that names itself first (the
*authserv-id*, usually the host name of the receiving server), then one
``method=result`` per check with the properties that check looked at::

    Authentication-Results: mx.example.org;
        spf=pass smtp.mailfrom=sender@example.net;
        dkim=pass header.d=example.net header.b=abcdEFGH

Readers (filters, MUAs, a later hop) believe only the fields carrying an
authserv-id they trust, so RFC 8601 section 5 makes the receiver remove
forgeries: "any MTA conforming to this specification MUST delete any
discovered instance of this header field that claims, by virtue of its
authentication service identifier, to have been added within its trust
boundary but that did not come directly from another trusted MTA".
Hence the three parts of this module:

* :func:`format_header` writes one field from :class:`AuthResult` values,
  quoting and escaping every value that comes from the network so that no
  address or domain can add a line, end a result early (``;``) or open a
  comment;
* :func:`remove_forged` (with :func:`authserv_id_of`) drops the fields that
  claim our authserv-id, leaving every other octet of the header section as
  it was;
* :func:`parse_results` reads the results of a field written by someone we
  trust (an ``ARC-Authentication-Results`` of a trusted sealer, RFC 8617
  section 4.1.1), comments allowed wherever RFC 8601's ``CFWS`` is.

Grammar (RFC 8601 section 2.2, ``value`` is RFC 2045's token or
quoted-string)::

    authres-payload = [CFWS] authserv-id [ CFWS authres-version ]
                      ( no-result / 1*resinfo ) [CFWS] CRLF
    no-result  = [CFWS] ";" [CFWS] "none"
    resinfo    = [CFWS] ";" methodspec [ CFWS reasonspec ] [ CFWS 1*propspec ]
    methodspec = [CFWS] method [CFWS] "=" [CFWS] result
    reasonspec = "reason" [CFWS] "=" [CFWS] value
    propspec   = ptype [CFWS] "." [CFWS] property [CFWS] "=" pvalue
    method     = Keyword [ [CFWS] "/" [CFWS] method-version ]
    pvalue     = [CFWS] ( value / [ [ local-part ] "@" ] domain-name ) [CFWS]

Implementation notes
====================

* Control characters cannot be written in a header field value at all,
  not even escaped in a quoted string (RFC 5322 section 3.2.1 allows only
  ``VCHAR`` and ``WSP`` after a backslash), so :func:`format_header`
  replaces each C0 control and DEL in a value or comment with ``?``.  The
  field records what was seen for a reader; a CR or LF from an SMTP peer
  must not become a new header field (header injection).
* Non-ASCII text (SMTPUTF8 addresses) is written as UTF-8 inside a quoted
  string, as RFC 6532 section 3.2 allows in the header fields of
  internationalized messages.
* The method version, and the field's version (only ``1`` exists), are
  read and dropped; they are never written.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from txmail.errors import TxMailError

__all__ = [
    "AuthResError",
    "AuthResult",
    "authserv_id_of",
    "format_header",
    "parse_results",
    "remove_forged",
]

#: Longest line :func:`format_header` writes when it can fold (RFC 5322 section 2.1.1).
_WIDTH = 78
_FOLD = b"\r\n    "
_FIELD_NAME = b"Authentication-Results:"

# RFC 2045 section 5.1: token := 1*<any (US-ASCII) CHAR except SPACE, CTLs, or tspecials>
_TSPECIALS = '()<>@,;:\\"/[]?='
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
# RFC 5322 section 3.2.3 atext, joined by dots: dot-atom-text.
_DOT_ATOM_RE = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(?:\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*"
# RFC 6376 section 3.5 domain-name: sub-domain 1*("." sub-domain).
_LABEL_RE = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN_RE = rf"{_LABEL_RE}(?:\.{_LABEL_RE})+"
_ADDRESS_RE = re.compile(rf"(?:(?:{_DOT_ATOM_RE})?@)?{_DOMAIN_RE}")
# RFC 8601 section 2.2 Keyword = ldh-str (RFC 5321 section 4.1.2).
_KEYWORD_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_CONTROLS_RE = re.compile(r"[\x00-\x1f\x7f]")
_DIGITS_RE = re.compile(r"[0-9]+")
_PVALUE_RUN_RE = re.compile(r"[^\s;()\"]*")
_WSP = " \t\r\n"


class AuthResError(TxMailError, ValueError):
    """An Authentication-Results field value does not follow RFC 8601 section 2.2."""


@dataclass(frozen=True)
class AuthResult:
    """
    One ``resinfo`` of an Authentication-Results field (RFC 8601 section 2.2).

    Attributes:
        method: the method, lower case: ``spf``, ``dkim``, ``dmarc``,
            ``arc``, ``iprev``, ``auth`` (SMTP AUTH, RFC 8601 section
            2.7.4)...
        result: the result keyword, lower case (``pass``, ``fail``,
            ``none``, ``temperror``...).
        reason: free text explaining the result (``reason=``), or ``None``.
        properties: ``(ptype, property, value)`` triples, written
            ``ptype.property=value`` in this order:
            ``("smtp", "mailfrom", "a@example.com")``, ``("header", "d",
            "example.com")``, ``("header", "b", "abcdEFGH")``,
            ``("policy", "iprev", "192.0.2.1")``.  ``ptype`` and
            ``property`` are keywords (lower case); ``value`` is any text.
        comment: a comment written right after the result (``dmarc=pass
            (p=reject dis=none)``), or ``None``.  Comments are for humans;
            RFC 8601 section 2.2 gives them no meaning.
    """

    method: str
    result: str
    reason: str | None = None
    properties: tuple[tuple[str, str, str], ...] = ()
    comment: str | None = None


# ---------------------------------------------------------------------------
# Writing


def _clean(text: str) -> str:
    """*text* with each control character (CR and LF included) replaced by ``?``."""
    return _CONTROLS_RE.sub("?", text)


def _quoted(text: str) -> str:
    """An RFC 5322 quoted-string holding *text* (controls replaced, ``"`` and ``\\`` escaped)."""
    escaped = _clean(text).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _value(text: str) -> str:
    """RFC 2045 ``value``: *text* as a token if it is one, else a quoted-string."""
    return text if _TOKEN_RE.fullmatch(text) else _quoted(text)


def _pvalue(text: str) -> str:
    """
    RFC 8601 section 2.2 ``pvalue``: a token, ``[[local-part] "@"]
    domain-name`` as it is (``a@example.com``, ``@example.com``), anything
    else quoted.
    """
    if _TOKEN_RE.fullmatch(text) or _ADDRESS_RE.fullmatch(text):
        return text
    return _quoted(text)


def _comment(text: str) -> str:
    """An RFC 5322 comment holding *text*, its parentheses and backslashes escaped."""
    escaped = _clean(text).replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return f"({escaped})"


def _keyword(text: str, what: str) -> str:
    if not _KEYWORD_RE.fullmatch(text):
        raise ValueError(f"{what} {text!r} is not an RFC 8601 Keyword")
    return text.lower()


def _atoms(result: AuthResult) -> list[str]:
    """The words of one resinfo, in the order they are written."""
    words = [f"{_keyword(result.method, 'method')}={_keyword(result.result, 'result')}"]
    if result.comment is not None:
        words.append(_comment(result.comment))
    if result.reason is not None:
        words.append(f"reason={_value(result.reason)}")
    for ptype, prop, value in result.properties:
        words.append(f"{_keyword(ptype, 'ptype')}.{_keyword(prop, 'property')}={_pvalue(value)}")
    return words


def format_header(authserv_id: str, results: Sequence[AuthResult]) -> bytes:
    """
    One ``Authentication-Results`` header field (RFC 8601 section 2.2).

    The authserv-id comes first, then each result; with no result the
    field says ``none`` (RFC 8601 section 2.2 ``no-result``).  Lines are
    folded between words so that they stay within 78 characters where a
    word allows it (RFC 5322 section 2.1.1); a single word longer than
    that (a long quoted value) is never split.

    Values (the authserv-id, ``reason``, property values, comments) may
    come from the network: any of them that is not a token (or, for a
    property, an address or domain) is written as a quoted-string, and
    control characters become ``?``, so none can break the field's syntax.

    Args:
        authserv_id: our authentication service identifier, usually the
            host name of this server.
        results: the results, written in order.

    Returns:
        the field, ``Authentication-Results:`` to the final CRLF, UTF-8.

    Raises:
        ValueError: a method, result, ptype or property is not an RFC 8601
            Keyword (a programming error: those come from our code).
    """
    words = [_value(authserv_id) + ";"]
    if not results:
        words.append("none")
    for n, result in enumerate(results):
        atoms = _atoms(result)
        if n < len(results) - 1:
            atoms[-1] += ";"
        words.extend(atoms)
    lines: list[bytes] = []
    line = _FIELD_NAME
    for word in words:
        encoded = word.encode("utf-8", errors="replace")
        if line is _FIELD_NAME or len(line) + 1 + len(encoded) <= _WIDTH:
            line = line + b" " + encoded
        else:
            lines.append(line)
            line = _FOLD[2:] + encoded
    lines.append(line)
    return b"\r\n".join(lines) + b"\r\n"


# ---------------------------------------------------------------------------
# Reading


class _Scanner:
    """A cursor over a field value, with one method per RFC 8601 lexical element."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, what: str) -> AuthResError:
        return AuthResError(f"{what} at offset {self.pos}")

    def peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def cfws(self) -> list[str]:
        """Skip white space (folding included) and comments; the comments' texts."""
        comments = []
        text, n = self.text, len(self.text)
        while self.pos < n:
            c = text[self.pos]
            if c in _WSP:
                self.pos += 1
            elif c == "(":
                comments.append(self._comment())
            else:
                break
        return comments

    def _comment(self) -> str:
        """comment = "(" *([FWS] ccontent) [FWS] ")", nested, with quoted-pairs."""
        text, n = self.text, len(self.text)
        start = self.pos
        depth, i, out = 0, self.pos, []
        while i < n:
            c = text[i]
            if c == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 2
                continue
            if c == "(":
                depth += 1
                if depth > 1:
                    out.append(c)
            elif c == ")":
                depth -= 1
                if depth == 0:
                    self.pos = i + 1
                    return " ".join("".join(out).split())
                out.append(c)
            else:
                out.append(c)
            i += 1
        self.pos = start
        raise self.fail("unterminated comment")

    def quoted_string(self) -> str:
        """quoted-string, its content with quoted-pairs resolved and folding removed."""
        text, n = self.text, len(self.text)
        i, out = self.pos + 1, []
        while i < n:
            c = text[i]
            if c == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 2
            elif c == '"':
                self.pos = i + 1
                return "".join(out)
            elif c in "\r\n":
                i += 1
            else:
                out.append(c)
                i += 1
        raise self.fail("unterminated quoted-string")

    def token(self) -> str | None:
        """RFC 2045 token (octets above 127 allowed, for RFC 6532 text)."""
        text, n = self.text, len(self.text)
        i = self.pos
        while i < n and text[i] > " " and text[i] != "\x7f" and text[i] not in _TSPECIALS:
            i += 1
        if i == self.pos:
            return None
        word = text[self.pos : i]
        self.pos = i
        return word

    def value(self) -> str | None:
        """RFC 2045 value = token / quoted-string."""
        if self.peek() == '"':
            return self.quoted_string()
        return self.token()

    def keyword(self) -> str | None:
        m = _KEYWORD_RE.match(self.text, self.pos)
        if m is None:
            return None
        self.pos = m.end()
        return m.group().lower()

    def digits(self) -> str | None:
        m = _DIGITS_RE.match(self.text, self.pos)
        if m is None:
            return None
        self.pos = m.end()
        return m.group()

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise self.fail(f"expected {char!r}")
        self.pos += 1

    def pvalue(self) -> str:
        """
        pvalue (RFC 8601 section 2.2), read generously: a quoted-string
        (followed by ``@domain`` when it is a quoted local-part), or
        everything up to white space, ``;`` or a comment.
        """
        if self.peek() == '"':
            start = self.pos
            content = self.quoted_string()
            if self.peek() != "@":
                return content
            m = _PVALUE_RUN_RE.match(self.text, self.pos)
            assert m is not None  # the pattern matches the empty string
            self.pos = m.end()
            return self.text[start : self.pos]
        m = _PVALUE_RUN_RE.match(self.text, self.pos)
        assert m is not None
        self.pos = m.end()
        return m.group()

    def arc_instance(self) -> None:
        """Skip ``i=N;`` (RFC 8617 section 4.1.1 ``arc-info``) if the value starts with it."""
        start = self.pos
        if self.keyword() == "i":
            self.cfws()
            if self.peek() == "=":
                self.pos += 1
                self.cfws()
                if self.digits() is not None:
                    self.cfws()
                    if self.peek() == ";":
                        self.pos += 1
                        self.cfws()
                        return
        self.pos = start


def _text(field_value: bytes | str) -> str:
    if isinstance(field_value, bytes):
        return field_value.decode("utf-8", errors="surrogateescape")
    return field_value


def authserv_id_of(field_value: bytes | str) -> str | None:
    """
    The authserv-id of an Authentication-Results field value (RFC 8601
    section 2.2), or ``None`` when the value does not start with one.

    Comments and folding white space before it are skipped; a quoted
    authserv-id is unquoted.  An ``ARC-Authentication-Results`` value
    (``i=N; authserv-id; ...``, RFC 8617 section 4.1.1) gives the
    authserv-id after its instance tag.  The authserv-id must be followed
    by white space, a comment, ``;`` or the end of the value: in
    ``x@mx.example.org; ...`` no authserv-id can be told apart, and the
    answer is ``None``.

    Args:
        field_value: the field's value: what follows the colon, folding
            included (``bytes`` are read as UTF-8).

    Returns:
        the authserv-id as written (compare it case-insensitively), or
        ``None``.
    """
    scanner = _Scanner(_text(field_value))
    try:
        scanner.cfws()
        scanner.arc_instance()
        ident = scanner.value()
    except AuthResError:
        return None
    if not ident:
        return None
    if not scanner.at_end() and scanner.peek() not in _WSP + "(;":
        return None
    return ident


def parse_results(field_value: bytes | str) -> tuple[str, list[AuthResult]]:
    """
    Read an Authentication-Results (or ARC-Authentication-Results) field
    value: its authserv-id and its results.

    Meant for fields written by someone we trust (our own, or a trusted ARC
    sealer's, RFC 8617 section 4.1.1): it follows RFC 8601 section 2.2
    with comments allowed wherever ``CFWS`` is (the RFC 8601 appendix B.7
    "comment-heavy" example reads), and is generous where writers are
    known to stray (``none`` next to results, a final ``;``).  The method
    and field versions are read and dropped.  The first comment after a
    result becomes :attr:`AuthResult.comment`; other comments are dropped.

    Args:
        field_value: the field's value (what follows the colon); ``bytes``
            are read as UTF-8.

    Returns:
        ``(authserv_id, results)``; ``results`` is empty for ``none``.

    Raises:
        AuthResError: the value does not follow the grammar.
    """
    s = _Scanner(_text(field_value))
    s.cfws()
    s.arc_instance()
    ident = s.value()
    if not ident:
        raise s.fail("no authserv-id")
    s.cfws()
    if s.digits() is not None:  # authres-version
        s.cfws()
    results: list[AuthResult] = []
    while not s.at_end():
        s.expect(";")
        s.cfws()
        if s.at_end():  # a final ";": tolerated
            break
        method = s.keyword()
        if method is None:
            raise s.fail("expected a method")
        s.cfws()
        if method == "none" and s.peek() != "=":
            continue
        if s.peek() == "/":  # method-version
            s.pos += 1
            s.cfws()
            if s.digits() is None:
                raise s.fail("expected a method version")
            s.cfws()
        s.expect("=")
        s.cfws()
        result = s.keyword()
        if result is None:
            raise s.fail("expected a result")
        comments = s.cfws()
        comment = comments[0] if comments else None
        reason: str | None = None
        properties: list[tuple[str, str, str]] = []
        while not s.at_end() and s.peek() != ";":
            name = s.keyword()
            if name is None:
                raise s.fail("expected reason or a property")
            s.cfws()
            if name == "reason" and s.peek() == "=" and reason is None and not properties:
                s.pos += 1
                s.cfws()
                reason = s.value()
                if reason is None:
                    raise s.fail("expected a reason")
            else:
                s.expect(".")
                s.cfws()
                prop = s.keyword()
                if prop is None:
                    raise s.fail("expected a property")
                s.cfws()
                s.expect("=")
                s.cfws()
                properties.append((name, prop, s.pvalue()))
            s.cfws()
        results.append(AuthResult(method, result, reason, tuple(properties), comment))
    return ident, results


# ---------------------------------------------------------------------------
# Removing forgeries

_FIELD_RE = re.compile(rb"([!-9;-~]+)[ \t]*:")


def _claims(value: bytes, ours: str) -> bool:
    """Whether an Authentication-Results field *value* may claim the authserv-id *ours*."""
    ident = authserv_id_of(value)
    if ident is not None:
        return ident.lower().rstrip(".") == ours
    # Unparseable: it cannot be proven foreign.  Remove it if our id shows
    # anywhere in it, since a lenient reader may take it for ours.
    unfolded = _text(value).replace("\r", "").replace("\n", "")
    return ours in unfolded.lower()


def remove_forged(header_section: bytes, authserv_id: str) -> bytes:
    """
    The header section without the Authentication-Results fields that
    claim to come from *authserv_id*.

    RFC 8601 section 5: an MTA "MUST delete any discovered instance of
    this header field that claims, by virtue of its authentication service
    identifier, to have been added within its trust boundary but that did
    not come directly from another trusted MTA".  Call it on mail arriving
    from outside the trust boundary, before adding our own field.

    A field claims our authserv-id when :func:`authserv_id_of` reads it
    there, compared case-insensitively and ignoring a final dot.  A field
    whose value starts with no readable authserv-id (an unterminated
    comment, ``x@ours``, garbage) cannot be proven foreign: it is removed
    when our authserv-id appears anywhere in its unfolded value (any
    case), since a more lenient reader downstream might take it for ours,
    and kept otherwise.  Field names are matched case-insensitively,
    white space before the colon allowed (RFC 5322 section 4.5.3).

    Every other octet is kept as it was: other fields with their folding
    and line ends, lines that are not fields, and anything after the blank
    line that ends the header section (so a whole message may be given).

    Args:
        header_section: the header fields, optionally followed by the blank
            line and the body.
        authserv_id: our authserv-id.

    Returns:
        the same octets without the forged fields.
    """
    ours = authserv_id.lower().rstrip(".")
    units: list[list[bytes]] = []  # each field (or stray line) with its continuation lines
    rest = b""
    pos, n = 0, len(header_section)
    while pos < n:
        end = header_section.find(b"\n", pos)
        end = n if end < 0 else end + 1
        line = header_section[pos:end]
        if not line.rstrip(b"\r\n"):
            rest = header_section[pos:]  # the blank line ending the header section, and the body
            break
        if line[:1] in (b" ", b"\t") and units:
            units[-1].append(line)
        else:
            units.append([line])
        pos = end
    out = []
    for unit in units:
        raw = b"".join(unit)
        m = _FIELD_RE.match(raw)
        if (
            m is not None
            and m.group(1).lower() == b"authentication-results"
            and _claims(raw[m.end() :], ours)
        ):
            continue
        out.append(raw)
    out.append(rest)
    return b"".join(out)
