"""
CATENATE (RFC 4469): APPEND builds the message from ``TEXT`` literals and
``URL`` references to messages (or parts of them) already on the server::

    APPEND Drafts (\\Draft) CATENATE (URL "/Drafts;UIDVALIDITY=3857/;UID=20/;SECTION=HEADER"
                                     TEXT {42} ... URL "/Drafts/;UID=20/;SECTION=1.MIME" ...)

* The parts are joined in order into one message (section 3), which is
  then appended like a literal: flags, date, the quota, APPENDUID.  Also
  in each message of a MULTIAPPEND (section 5; RFC 3502) and in REPLACE
  (RFC 8508, which takes an ``append-message``).
* Every URL is resolved before anything is written, so a bad one appends
  nothing, in a MULTIAPPEND neither (section 3: the whole command fails).
* A URL (:mod:`txmail.imap.url`, RFC 5092) may be absolute, a
  network-path (``//host/...``), an absolute-path (``/mailbox/;UID=n``)
  or a relative reference, resolved against the selected mailbox
  (``;UID=n``).  It must name a message by UID, with an optional
  ``;UIDVALIDITY=`` (checked), ``;SECTION=`` (a FETCH ``section-spec``,
  RFC 3501 section 6.4.5) and ``;PARTIAL=offset[.length]``.
* Only this server's mail, and only the logged-in user's: a host other
  than the server's names (``server_names``: its host name and the
  address the client connected to) or a user other than the logged-in
  one get ``NO [BADURL url]``, as do a syntax error in the URL, an
  unknown mailbox, UIDVALIDITY, message or part.  A URLAUTH-authorized
  URL (RFC 4467, :mod:`txmail.imap.commands.urlauth`) is accepted when
  URLFETCH would give its data to the logged-in user (it may name another
  user's mail, which that user signed); otherwise ``NO [BADURL url]``.
  Reading a message through a URL does not set ``\\Seen``.
* ``BADURL`` carries the URL as a bare ``url-resp-text`` (section 5 and
  erratum 4046, as Dovecot), without ``]``, CR or LF, at most 200
  characters.
* Size: a built message over the APPENDLIMIT (``max_literal``), or a
  command whose messages together exceed what one APPEND may carry
  (``max_literal`` plus 64 KiB, the framer's ``max_command``), is ``NO
  [TOOBIG]`` (section 3); TEXT literals are bounded by the framer before
  they are read.  At most :data:`txmail.imap.parser.MAX_CATENATE_PARTS`
  parts per message and :data:`MAX_URLS` URLs per command (each is a
  message read).
* A message read is kept for the next URL of the command when that one
  names the same message (the parts of one message are usually taken one
  after the other).
* Not done: answering ``NO [BADURL]`` before the client sent the
  remaining literals (section 3 allows the server to fail early; the
  framer reads the whole command first, so the client sends them all).

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from collections.abc import Sequence

from txmail import mime
from txmail.errors import InvalidMailboxName, NoSuchMailbox, NoSuchMessage
from txmail.imap.commands.context import CommandContext, call, user_store
from txmail.imap.commands.registry import extension
from txmail.imap.commands.urlauth import UnauthorizedURL, authorized_mailbox
from txmail.imap.responses import No
from txmail.imap.types import AppendMessage
from txmail.imap.url import IMAPURL, URLError, parse_url, response_text, url_part
from txmail.interfaces import IMailbox

__all__ = ["MAX_URLS", "bad_url", "build_message", "build_messages", "read_url", "server_names"]

#: URL parts of one command (each reads a message).
MAX_URLS = 256

# 64 KiB beyond the APPENDLIMIT, as the framer's max_command (txmail.imap.session).
_COMMAND_SLACK = 64 * 1024


def bad_url(url: str, text: str = "Bad URL") -> No:
    """``NO [BADURL url] text`` (RFC 4469 section 5)."""
    return No(text, "BADURL " + response_text(url))


class _Reader:
    """Resolves the URLs of one command, keeping the last message read."""

    def __init__(self, ctx: CommandContext) -> None:
        self.ctx = ctx
        self.urls = 0
        self._last: tuple[str, str, int, int] | None = None
        self._message: mime.ParsedMessage | None = None

    async def read(self, text: str) -> bytes:
        """The octets *text* names; ``NO [BADURL]`` when it names nothing this user may read."""
        self.urls += 1
        if self.urls > MAX_URLS:
            raise No("Too many URLs in one command", "LIMIT")
        ctx = self.ctx
        view = ctx.session.view
        try:
            url = parse_url(text, None if view is None else view.name)
        except URLError:
            raise bad_url(text) from None
        message = await self._message_of(url, text)
        try:
            return url_part(message, url)
        except URLError:
            raise bad_url(text, "No such message part") from None

    async def _mailbox(self, url: IMAPURL, text: str) -> IMailbox:
        """The mailbox *url* names, if the logged-in user may read it."""
        ctx = self.ctx
        if url.access is not None or url.token is not None:
            try:
                return await authorized_mailbox(ctx, url)  # RFC 4467 URLAUTH
            except UnauthorizedURL:
                raise bad_url(text, "URLAUTH URL not authorized") from None
        if url.host is not None and url.host not in server_names(ctx):
            raise bad_url(text, "URL names another server")
        if url.user is not None and url.user != ctx.session.user:
            raise bad_url(text, "URL names another user's mailbox")
        try:
            mailbox: IMailbox = await call(user_store(ctx).get_mailbox, url.mailbox)
        except (NoSuchMailbox, InvalidMailboxName):
            raise bad_url(text, "No such mailbox") from None
        if url.uidvalidity is not None and url.uidvalidity != mailbox.uidvalidity:
            raise bad_url(text, "UIDVALIDITY mismatch")
        return mailbox

    async def _message_of(self, url: IMAPURL, text: str) -> mime.ParsedMessage:
        mailbox = await self._mailbox(url, text)
        key = (url.user or self.ctx.session.user or "", url.mailbox, mailbox.uidvalidity, url.uid)
        if key == self._last and self._message is not None:
            return self._message
        try:
            data = await call(mailbox.read_message, url.uid)
        except NoSuchMessage:
            raise bad_url(text, "No such message") from None
        self._last, self._message = key, mime.ParsedMessage(bytes(data))
        return self._message


def server_names(ctx: CommandContext) -> frozenset[str]:
    """The host names a URL may give for this server (lower-cased)."""
    return frozenset(getattr(ctx, "server_names", ()) or ())


async def read_url(ctx: CommandContext, url: str) -> bytes:
    """The octets one CATENATE ``URL`` names (a single URL: see :func:`build_messages`)."""
    return await _Reader(ctx).read(url)


async def build_messages(ctx: CommandContext, messages: Sequence[AppendMessage]) -> tuple[AppendMessage, ...]:
    """
    *messages* with each CATENATE append's message built from its parts;
    the others as they are.  ``NO [BADURL]``, ``NO [TOOBIG]`` or ``NO
    [LIMIT]`` before anything is written.
    """
    if all(m.catenate is None for m in messages):
        return tuple(messages)
    limit = ctx.session.limits.max_literal
    total_limit = limit + _COMMAND_SLACK
    reader = _Reader(ctx)
    total = sum(len(m.literal) for m in messages)
    out: list[AppendMessage] = []
    for m in messages:
        if m.catenate is None:
            out.append(m)
            continue
        pieces: list[bytes] = []
        size = 0
        for part in m.catenate:
            data = part.text if part.text is not None else await reader.read(part.url or "")
            size += len(data)
            total += len(data)
            if size > limit or total > total_limit:
                raise No("Message too large", "TOOBIG")
            pieces.append(data)
        binary = any(p.binary for p in m.catenate)
        out.append(AppendMessage(m.flags, m.date, b"".join(pieces), binary))
    return tuple(out)


async def build_message(ctx: CommandContext, message: AppendMessage) -> AppendMessage:
    """:func:`build_messages` of one message (REPLACE)."""
    (built,) = await build_messages(ctx, (message,))
    return built


# RFC 4469 section 2: APPEND takes CATENATE.
extension("CATENATE")
