"""
URLAUTH (RFC 4467): GENURLAUTH signs an IMAP URL so that someone else may
read what it names, URLFETCH reads signed URLs, RESETKEY revokes them;
CATENATE (:mod:`txmail.imap.commands.catenate`) takes signed URLs too.

* One mechanism, ``INTERNAL`` (section 7): the verifier is the hexadecimal
  HMAC-SHA-256 of the URL rump (the URL up to and including the access
  identifier, exactly as written), keyed with the mailbox access key the
  store keeps (:class:`txmail.interfaces.IURLAuthKeys`: random, 256 bits,
  per user and mailbox, made at the first GENURLAUTH and bound to the
  mailbox's UIDVALIDITY, so a mailbox deleted and made again signs anew).
  The Maildir store keeps the keys in a file, across restarts.
* GENURLAUTH (section 6.1) takes absolute URLs only, naming this server
  (``server_names``), the logged-in user as ``enc-user``, a mailbox of
  theirs that exists (with the right UIDVALIDITY when given) and a
  ``;URLAUTH=`` access identifier, and no verifier; anything else is ``NO
  [BADURL url]`` and no URL of the command is given.  It does not check
  that the message exists (a URL may be made before the message is
  appended).
* URLFETCH (section 6.3) answers ``* URLFETCH url data`` for each URL, or
  ``NIL`` when it is not a valid URLAUTH URL of this server, the verifier
  is wrong, ``;EXPIRE=`` has passed, the access identifier does not admit
  the logged-in user, or the message or part does not exist.  Access
  identifiers (section 3): ``anonymous`` and ``authuser`` admit every
  logged-in user, ``user+name`` the user *name*; ``submit+name`` admits
  nobody here (the message submission entity of RFC 4468 BURL is not
  part of txmail).  Another user's mail is read through
  ``ctx.user_store``, only with a valid verifier.  Data holding a NUL
  (not representable in an ``nstring``) is ``NIL``.  At most
  :data:`txmail.imap.parser.MAX_URLAUTH_ITEMS` URLs per command.
* RESETKEY (section 6.2) forgets the keys of one mailbox (answering
  ``OK [URLMECH INTERNAL]``) or all of the user's; the URLs signed with
  them stop working.  A mechanism other than INTERNAL is ``NO``.
* Not done: the ``* OK [URLMECH INTERNAL]`` of SELECT and EXAMINE.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac

from txmail import mime
from txmail.errors import InvalidMailboxName, NoSuchMailbox, NoSuchMessage, StoreError
from txmail.imap.commands.context import CommandContext, call, store_op, user_store
from txmail.imap.commands.registry import AUTHENTICATED, command
from txmail.imap.responses import Done, GenUrlAuthData, No, UrlFetchData
from txmail.imap.types import Command, GenUrlAuth, ResetKey, UrlFetch
from txmail.imap.url import IMAPURL, URLError, parse_url, response_text, url_part
from txmail.interfaces import IMailbox, IMailStore, IURLAuthKeys

__all__ = ["MECHANISM", "UnauthorizedURL", "authorized_mailbox", "sign"]

#: The one URLAUTH mechanism (RFC 4467 section 7).
MECHANISM = "INTERNAL"


class UnauthorizedURL(Exception):
    """A URLAUTH URL that does not give the logged-in user what it names."""


def sign(key: bytes, rump: str) -> str:
    """The INTERNAL verifier of *rump*: HMAC-SHA-256 with the mailbox access key, in hexadecimal."""
    return hmac.new(key, rump.encode("utf-8"), hashlib.sha256).hexdigest()


def now() -> datetime.datetime:
    """The time ``;EXPIRE=`` is compared with (tests replace it)."""
    return datetime.datetime.now(datetime.UTC)


def _server_names(ctx: CommandContext) -> frozenset[str]:
    return frozenset(getattr(ctx, "server_names", ()) or ())


def _admits(access: str, user: str | None) -> bool:
    """RFC 4467 section 3: whether the access identifier lets *user* (logged in) read the URL."""
    if user is None:
        return False
    if access in ("anonymous", "authuser"):
        return True
    kind, _, name = access.partition("+")
    return kind == "user" and name == user


async def _store_of(ctx: CommandContext, user: str) -> IMailStore | None:
    """The store of *user*: the session's own, or another user's through ``ctx.user_store`` (optional)."""
    if user == ctx.session.user:
        return ctx.store
    find = getattr(ctx, "user_store", None)
    found: IMailStore | None = None if find is None else await call(find, user)
    return found


async def authorized_mailbox(ctx: CommandContext, url: IMAPURL) -> IMailbox:
    """
    The mailbox a URLAUTH-authorized *url* gives the logged-in user access
    to (section 6.3); :class:`UnauthorizedURL` otherwise.
    """
    if url.host is None or url.host not in _server_names(ctx) or url.user is None:
        raise UnauthorizedURL("not an absolute URL of this server")
    if url.access is None or url.mechanism != MECHANISM or url.token is None:
        raise UnauthorizedURL("not a URLAUTH-authorized URL")
    if url.expire is not None and url.expire <= now():
        raise UnauthorizedURL("expired")
    if not _admits(url.access, ctx.session.user):
        raise UnauthorizedURL("access identifier")
    store = await _store_of(ctx, url.user)
    keys = IURLAuthKeys(store, None)
    if store is None or keys is None:
        raise UnauthorizedURL("no such user")
    try:
        mailbox: IMailbox = await call(store.get_mailbox, url.mailbox)
    except (NoSuchMailbox, InvalidMailboxName):
        raise UnauthorizedURL("no such mailbox") from None
    if url.uidvalidity is not None and url.uidvalidity != mailbox.uidvalidity:
        raise UnauthorizedURL("UIDVALIDITY")
    key = await call(keys.urlauth_key, url.mailbox, mailbox.uidvalidity)
    if key is None or not hmac.compare_digest(sign(key, url.rump), url.token):
        raise UnauthorizedURL("verifier")
    return mailbox


def _key_store(ctx: CommandContext) -> IURLAuthKeys:
    """The session's store, which must keep access keys (:class:`IURLAuthKeys`): else NO [CANNOT]."""
    keys = IURLAuthKeys(ctx.store, None)
    if keys is None:
        raise No("URLAUTH is not available for this mailbox store", "CANNOT")
    return keys


def _bad(rump: str, text: str) -> No:
    return No(text, "BADURL " + response_text(rump))


@command("GENURLAUTH", states=AUTHENTICATED, capability="URLAUTH")
async def genurlauth(ctx: CommandContext, cmd: Command) -> Done:
    """RFC 4467 section 6.1: each rump with its INTERNAL verifier, in one ``* GENURLAUTH``."""
    args = cmd.args
    assert isinstance(args, GenUrlAuth)
    store = _key_store(ctx)
    urls: list[str] = []
    for rump, mechanism in args.requests:
        if mechanism != MECHANISM:
            raise _bad(rump, "Unsupported URLAUTH mechanism")
        try:
            url = parse_url(rump)
        except URLError:
            raise _bad(rump, "Bad URL") from None
        if url.host is None or url.host not in _server_names(ctx) or url.user != ctx.session.user:
            raise _bad(rump, "The URL must name this server and the logged-in user")
        if url.access is None or url.token is not None:
            raise _bad(rump, "Not a URLAUTH URL rump")
        try:
            mailbox = await call(user_store(ctx).get_mailbox, url.mailbox)
        except (NoSuchMailbox, InvalidMailboxName):
            raise _bad(rump, "No such mailbox") from None
        if url.uidvalidity is not None and url.uidvalidity != mailbox.uidvalidity:
            raise _bad(rump, "UIDVALIDITY mismatch")
        key = await call(store.urlauth_key, url.mailbox, mailbox.uidvalidity, True)
        assert key is not None  # create=True: a key is made when there is none
        urls.append(f"{rump}:{MECHANISM.lower()}:{sign(key, rump)}")
    ctx.emit(GenUrlAuthData(tuple(urls)))
    return Done()


@command("RESETKEY", states=AUTHENTICATED, capability="URLAUTH")
async def resetkey(ctx: CommandContext, cmd: Command) -> Done:
    """RFC 4467 section 6.2: forget one mailbox's access key, or all of them."""
    args = cmd.args
    assert isinstance(args, ResetKey)
    store = _key_store(ctx)
    if any(m != MECHANISM for m in args.mechanisms):
        raise No("Unsupported URLAUTH mechanism")
    if args.mailbox is None:
        await call(store.reset_urlauth_keys)
        return Done("All keys removed")
    await store_op(user_store(ctx).get_mailbox, args.mailbox)  # NO [NONEXISTENT]
    await call(store.reset_urlauth_keys, args.mailbox)
    return Done("Keys removed", code="URLMECH " + MECHANISM)


async def _fetch(ctx: CommandContext, text: str) -> bytes | None:
    """What *text* gives the logged-in user, or ``None``."""
    try:
        url = parse_url(text)
        mailbox = await authorized_mailbox(ctx, url)
        data = await call(mailbox.read_message, url.uid)
        part = url_part(mime.ParsedMessage(bytes(data)), url)
    except (URLError, UnauthorizedURL, NoSuchMessage):
        return None
    except StoreError:
        return None
    return None if b"\x00" in part else part


@command("URLFETCH", states=AUTHENTICATED, capability="URLAUTH")
async def urlfetch(ctx: CommandContext, cmd: Command) -> Done:
    """RFC 4467 section 6.3: ``* URLFETCH url data`` (or NIL) for each URL, in order."""
    args = cmd.args
    assert isinstance(args, UrlFetch)
    for text in args.urls:
        ctx.emit(UrlFetchData(text, await _fetch(ctx, text)))
        await ctx.drain()
    return Done()
