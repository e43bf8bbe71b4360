"""
Spam filtering with rspamd (https://rspamd.com): each inbound message is
scanned over rspamd's HTTP API at the end of data, and what users file into
or out of their Junk folder over IMAP is learnt.

::

    [rspamd]
    url = "http://127.0.0.1:11333"             # the normal worker (/checkv2)
    controller_url = "http://127.0.0.1:11334"  # the controller (/learnspam, /learnham)
    password = "..."                           # the controller's (enable_)password
    timeout = 15                               # seconds per scan
    fail_action = "accept"                     # or "tempfail" when rspamd cannot answer
    listeners = ["mta"]                        # the SMTP roles scanned ("mta", "submission", "lmtp")
    max_size = 20971520                        # larger messages are not scanned
    learn = true                               # learn from moves into / out of Junk

Theory of operation
-------------------
**Scanning** (:class:`RspamdPolicy`, at the data stage, port 25 only by
default).  The client's message (without our own trace fields) is POSTed to
``/checkv2`` with what rspamd's protocol wants to know about the SMTP
session (https://rspamd.com/doc/developers/protocol.html): ``IP`` (the
client's address), ``Helo``, ``Hostname`` (the client's forward-confirmed
reverse DNS name; ``unknown`` when it was looked up and has none, so that
rspamd does not look it up again; left out when it was not looked up, and
rspamd looks it up itself), ``From`` (the envelope sender, ``<>`` for a
bounce), one ``Rcpt`` per recipient, ``Deliver-To`` for a single
recipient (rspamd's per-user statistics), ``Queue-Id`` (our message id, in
rspamd's log), ``User`` (the authenticated user) and ``MTA-Name`` (our host
name).  ``Pass: all`` is not sent: it makes rspamd run every rule even
after the reject score is reached, which costs time and changes nothing
here.  Its answer's ``action``:

* ``reject``: ``554 5.7.1`` at the final dot, with rspamd's
  ``smtp_message`` when it is one clean line of printable ASCII, else
  "Spam message rejected".
* ``soft reject``: ``451 4.7.1`` (rspamd's ``smtp_message`` or "Try again
  later"), e.g. a rate limit of rspamd's.
* ``greylist``: ``451 4.7.1 Try again later`` the first time; the same
  message (client address, sender, recipients, Message-ID) retried after
  ``greylist_delay`` (5 minutes) and within a day is accepted, as rspamd's
  own greylist module would.  Without this memory a message scoring
  between the greylist and the add-header score would be deferred until it
  bounced.
* ``add header`` and ``rewrite subject``: delivered into the recipients'
  Junk folder (the mailbox with the ``\\Junk`` special use, created with
  it when missing; :meth:`txmail.policy.hooks.Verdict.deliver_to`) with
  ``X-Spam: Yes``; ``rewrite subject`` also replaces the Subject with
  rspamd's ``subject``.
* ``no action``: delivered as usual.

Every scanned message gets ``X-Spam-Status: Yes|No, score=S
required=R`` (SpamAssassin's form; R is rspamd's reject score) and
``X-Spam-Score: S``; the client's own ``X-Spam``, ``X-Spam-Status``,
``X-Spam-Score`` and ``X-Spam-Flag`` fields are removed, so that a sender
cannot mark its mail clean.

When rspamd cannot be asked (refused connection, no answer within
``timeout``, an HTTP error, an answer that is not rspamd's JSON) the
failure is logged and ``fail_action`` decides: ``accept`` (the default)
delivers with ``X-Spam-Status: Unknown, not scanned (rspamd unavailable)``;
``tempfail`` answers ``451 4.3.0`` and the client retries later.  Messages
larger than ``max_size`` (20 MiB, rspamd's own default limit) are not sent.

**Learning** (:class:`RspamdLearner`, an IMAP copy listener,
:mod:`txmail.imap.listeners`).  A message a user moves or copies into Junk
(the ``\\Junk`` mailbox, or one named ``Junk``) from another folder is
POSTed to the controller's ``/learnspam``; one moved or copied out of Junk
into another folder but Trash (``\\Trash`` or ``Trash``: deleting spam is
not calling it ham) to ``/learnham`` (what Dovecot's IMAPSieve +
``rspamc`` recipes do).  The IMAP command does not wait: the copies are
read from the target mailbox and sent afterwards, a few at a time; failures
are logged.  rspamd's "already learned" answer is logged as such.
"""

from __future__ import annotations

import email.header
import hashlib
import io
import json
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from txmail.model import SpecialUse
from txmail.policy.hooks import MessageInfo, Policy, SessionInfo, Verdict
from txmail.policy.rspamd_settings import (
    DEFAULT_CONTROLLER_URL,
    DEFAULT_MAX_SIZE,
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    FAIL_ACTIONS,
    RspamdSettings,
    parse_rspamd_settings,
)

if TYPE_CHECKING:
    from txmail.imap.listeners import MessagesCopied

__all__ = [
    "DEFAULT_CONTROLLER_URL",
    "DEFAULT_URL",
    "RspamdError",
    "RspamdLearner",
    "RspamdPolicy",
    "RspamdSettings",
    "build_rspamd",
    "parse_rspamd_settings",
    "strip_spam_fields",
]


#: Header fields the client may not set (removed from its header section).
SPAM_FIELDS = frozenset({b"x-spam", b"x-spam-status", b"x-spam-score", b"x-spam-flag"})
_FIELD_START = re.compile(rb"^([!-9;-~]+)[ \t]*:")
_SAFE_TEXT = re.compile(r"^[\x20-\x7e]{1,200}$")

REJECT_REPLY = "554 5.7.1 Spam message rejected"
SOFT_REJECT_REPLY = "451 4.7.1 Try again later"
GREYLIST_REPLY = "451 4.7.1 Try again later"
TEMPFAIL_REPLY = "451 4.3.0 Spam filter unavailable, try again later"
NOT_SCANNED = "Unknown, not scanned (rspamd unavailable)"


class RspamdError(Exception):
    """rspamd could not be asked, or did not answer as rspamd does."""


def strip_spam_fields(header_section: bytes) -> bytes:
    """*header_section* without its ``X-Spam``, ``X-Spam-Status``, ``X-Spam-Score`` and ``X-Spam-Flag`` fields."""
    out: list[bytes] = []
    dropping = False
    for line in header_section.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                out.append(line)
            continue
        match = _FIELD_START.match(line)
        dropping = bool(match and match.group(1).lower() in SPAM_FIELDS)
        if not dropping:
            out.append(line)
    return b"".join(out)


def _replace_subject(subject: str) -> Callable[[bytes], bytes]:
    """An edit that makes *subject* the message's Subject (RFC 2047-encoded when not ASCII)."""
    ascii_subject = " ".join(subject.split())
    value = (
        ascii_subject
        if ascii_subject.isascii()
        else email.header.Header(subject, "utf-8").encode(linesep="\r\n")
    )
    new_field = b"Subject: " + value.encode("ascii", "replace") + b"\r\n"

    def edit(header_section: bytes) -> bytes:
        out: list[bytes] = []
        replaced = dropping = False
        for line in header_section.splitlines(keepends=True):
            if line[:1] in (b" ", b"\t"):
                if not dropping:
                    out.append(line)
                continue
            match = _FIELD_START.match(line)
            dropping = bool(match and match.group(1).lower() == b"subject")
            if dropping and not replaced:
                out.append(new_field)
                replaced = True
            elif not dropping:
                out.append(line)
        if not replaced:
            out.insert(0, new_field)
        return b"".join(out)

    return edit


def _clean(value: str) -> str | None:
    """*value* as an HTTP header value, or ``None`` when it cannot be one."""
    if any(c in value for c in "\r\n\x00"):
        return None
    return value


def _score(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


async def _request(
    agent: Any,
    clock: IReactorTime,
    url: str,
    headers: Mapping[str, list[str]],
    body: Any,
    timeout: float,
) -> tuple[int, bytes]:
    """POST *body* (a file object) to *url*; ``(status, body)``, or RspamdError."""
    producer = FileBodyProducer(body) if body is not None else None
    raw = Headers({k.encode("ascii"): [v.encode("utf-8") for v in vs] for k, vs in headers.items()})
    d = agent.request(b"POST" if producer is not None else b"GET", url.encode("ascii"), raw, producer)
    d.addTimeout(timeout, clock)
    try:
        response = await d
        content = await readBody(response).addTimeout(timeout, clock)
    except defer.TimeoutError:
        raise RspamdError(f"no answer from {url} within {timeout:g} s") from None
    except Exception as e:
        raise RspamdError(f"{url}: {type(e).__name__}: {e}") from None
    return response.code, content


def _default_agent(reactor: Any, timeout: float) -> Agent:
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 16
    return Agent(reactor, connectTimeout=timeout, pool=pool)


class RspamdPolicy(Policy):
    """
    Scans each message with rspamd at the end of data (see the module notes).

    Args:
        url: the normal worker's base URL (``/checkv2`` is appended).
        reactor: what the HTTP client connects with (default the global one).
        clock: the timeout's ``IReactorTime`` (default *reactor*).
        timeout: seconds for rspamd's whole answer.
        fail_action: ``"accept"`` or ``"tempfail"`` when rspamd cannot answer.
        roles: the SMTP roles scanned.
        max_size: messages larger than this (octets) are not sent.
        greylist_delay: seconds before a message rspamd greylisted is
            accepted on retry.
        greylist_expire: seconds a greylisted message is remembered.
        agent: an ``IAgent`` to send with (tests); default an ``Agent`` with
            a persistent connection pool.
    """

    log = Logger()

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        reactor: Any = None,
        clock: IReactorTime | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        fail_action: str = "accept",
        roles: Iterable[str] = ("mta",),
        max_size: int = DEFAULT_MAX_SIZE,
        greylist_delay: float = 300.0,
        greylist_expire: float = 86400.0,
        agent: Any = None,
    ) -> None:
        if fail_action not in FAIL_ACTIONS:
            raise ValueError(f"fail_action must be one of {', '.join(FAIL_ACTIONS)}")
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.url = url.rstrip("/") + "/checkv2"
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.timeout = timeout
        self.fail_action = fail_action
        self.roles = frozenset(roles)
        self.max_size = max_size
        self.greylist_delay = greylist_delay
        self.greylist_expire = greylist_expire
        self._own_agent = agent is None
        self.agent = agent if agent is not None else _default_agent(reactor, timeout)
        self._greylisted: OrderedDict[bytes, float] = OrderedDict()

    def stop(self) -> Any:
        """Close the idle connections to rspamd."""
        pool = getattr(self.agent, "_pool", None)
        if self._own_agent and pool is not None:
            return pool.closeCachedConnections()
        return None

    # -- the request --

    def request_headers(self, session: SessionInfo) -> dict[str, list[str]]:
        """The rspamd protocol headers for the message of *session*'s transaction."""
        transaction = session.transaction
        assert transaction is not None
        headers: dict[str, list[str]] = {}

        def put(name: str, value: str | None) -> None:
            if value is not None and (value := _clean(value)) is not None:
                headers.setdefault(name, []).append(value)

        if session.client_address:
            put("IP", session.client_address)
        put("Helo", session.helo)
        if session.client_name:
            put("Hostname", session.client_name)
        elif session.iprev is not None:
            put("Hostname", "unknown")
        put("From", transaction.mail_from or "<>")
        for recipient in transaction.recipients:
            put("Rcpt", recipient)
        if len(transaction.recipients) == 1:
            put("Deliver-To", transaction.recipients[0])
        put("Queue-Id", transaction.message_id or None)
        put("User", session.authenticated_user)
        put("MTA-Name", session.hostname or None)
        return headers

    def _body(self, message: MessageInfo) -> Any:
        data = message.data
        if data is not None:
            return io.BytesIO(data)
        return message.open()  # FileBodyProducer reads and closes it

    async def scan(self, session: SessionInfo, message: MessageInfo) -> dict[str, Any]:
        """rspamd's JSON answer for *message*, or RspamdError."""
        body = self._body(message)
        try:
            status, content = await _request(
                self.agent, self.clock, self.url, self.request_headers(session), body, self.timeout
            )
        finally:
            body.close()
        if status != 200:
            raise RspamdError(f"{self.url} answered HTTP {status}: {content[:200]!r}")
        try:
            result = json.loads(content)
        except ValueError:
            raise RspamdError(f"{self.url} answered something that is not JSON: {content[:200]!r}") from None
        if not isinstance(result, dict) or not isinstance(result.get("action"), str):
            raise RspamdError(f"{self.url} answered without an action: {content[:200]!r}")
        return result

    # -- the stage --

    def on_data(self, session: SessionInfo, message: MessageInfo) -> Any:
        if message.size > self.max_size:
            self.log.info(
                "{message_id}: {size} octets, not scanned by rspamd (max_size {max_size})",
                message_id=session.transaction.message_id if session.transaction else "",
                size=message.size,
                max_size=self.max_size,
                session_id=session.session_id,
            )
            return None
        return defer.Deferred.fromCoroutine(self._check(session, message))

    async def _check(self, session: SessionInfo, message: MessageInfo) -> Verdict:
        assert session.transaction is not None
        message_id = session.transaction.message_id
        strip = Verdict.edit_headers(strip_spam_fields)
        try:
            result = await self.scan(session, message)
        except RspamdError as e:
            self.log.warn(
                "{message_id}: rspamd scan failed ({fail_action}): {error}",
                message_id=message_id,
                fail_action=self.fail_action,
                error=str(e),
                session_id=session.session_id,
            )
            if self.fail_action == "tempfail":
                return Verdict.reject(TEMPFAIL_REPLY)
            return strip.then(Verdict.add_header("X-Spam-Status", NOT_SCANNED))
        action = result["action"]
        score = _score(result.get("score"))
        required = _score(result.get("required_score"))
        symbols = result.get("symbols")
        self.log.info(
            "{message_id}: rspamd {action}, score {score:.2f}/{required:.2f} ({symbols})",
            message_id=message_id,
            action=action,
            score=score,
            required=required,
            symbols=",".join(sorted(symbols)) if isinstance(symbols, dict) else "",
            session_id=session.session_id,
        )
        smtp_message = (
            (result.get("messages") or {}).get("smtp_message")
            if isinstance(result.get("messages"), dict)
            else None
        )
        text = smtp_message if isinstance(smtp_message, str) and _SAFE_TEXT.match(smtp_message) else None
        if action == "reject":
            return Verdict.reject(f"554 5.7.1 {text}" if text else REJECT_REPLY)
        if action == "soft reject":
            return Verdict.reject(f"451 4.7.1 {text}" if text else SOFT_REJECT_REPLY)
        spam = action in ("add header", "rewrite subject")
        if action == "greylist" and not self._greylist_passed(session, result):
            return Verdict.reject(GREYLIST_REPLY)
        if action not in ("no action", "greylist") and not spam:
            self.log.warn(
                "{message_id}: unknown rspamd action {action!r}; delivering",
                message_id=message_id,
                action=action,
                session_id=session.session_id,
            )
        verdict = strip.then(
            Verdict.add_header(
                "X-Spam-Status", f"{'Yes' if spam else 'No'}, score={score:.2f} required={required:.2f}"
            )
        ).then(Verdict.add_header("X-Spam-Score", f"{score:.2f}"))
        if spam:
            verdict = Verdict.add_header("X-Spam", "Yes").then(verdict).then(Verdict.deliver_to("Junk"))
            subject = result.get("subject")
            if action == "rewrite subject" and isinstance(subject, str) and _clean(subject) is not None:
                verdict = verdict.then(Verdict.edit_headers(_replace_subject(subject)))
        return verdict

    def _greylist_passed(self, session: SessionInfo, result: Mapping[str, Any]) -> bool:
        """Whether this message was greylisted long enough ago (see the module notes); remember it if not."""
        transaction = session.transaction
        assert transaction is not None
        key = hashlib.sha256(
            "\x00".join(
                [
                    session.client_address,
                    transaction.mail_from,
                    *sorted(r.lower() for r in transaction.recipients),
                    str(result.get("message-id", "")),
                ]
            ).encode("utf-8", "replace")
        ).digest()
        now = self.clock.seconds()
        while self._greylisted:
            oldest, first_seen = next(iter(self._greylisted.items()))
            if now - first_seen <= self.greylist_expire and len(self._greylisted) <= 100_000:
                break
            del self._greylisted[oldest]
        seen = self._greylisted.get(key)
        if seen is None:
            self._greylisted[key] = now
            return False
        return now - seen >= self.greylist_delay


class RspamdLearner:
    """
    Learns spam and ham from what users file into and out of Junk over IMAP
    (an IMAP copy listener: ``IMAPFactory(copy_listeners=[learner])``; see
    the module notes).

    Args:
        controller_url: the controller's base URL.
        password: its password (sent as ``Password``), or ``None``.
        reactor: what the HTTP client connects with (default the global one).
        clock: the timeout's ``IReactorTime`` (default *reactor*).
        timeout: seconds per learn request.
        max_size: larger messages are not learnt.
        concurrency: learn requests in flight at once.
        retry_delays: seconds to wait before each new try after a failure
            that may pass (no answer, or HTTP 5xx: rspamd's sqlite3 Bayes
            backend answers "database is locked" while a scan reads it).
        agent: an ``IAgent`` (tests).
    """

    log = Logger()

    def __init__(
        self,
        controller_url: str = DEFAULT_CONTROLLER_URL,
        *,
        password: str | None = None,
        reactor: Any = None,
        clock: IReactorTime | None = None,
        timeout: float = 60.0,
        max_size: int = DEFAULT_MAX_SIZE,
        concurrency: int = 4,
        retry_delays: Iterable[float] = (1.0, 5.0, 30.0),
        agent: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.retry_delays = tuple(retry_delays)
        self.controller_url = controller_url.rstrip("/")
        self.password = password
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.timeout = timeout
        self.max_size = max_size
        self.agent = agent if agent is not None else _default_agent(reactor, timeout)
        self._own_agent = agent is None
        self._semaphore = defer.DeferredSemaphore(concurrency)
        self._pending: set[defer.Deferred[Any]] = set()

    @staticmethod
    def _is_junk(name: str, role: SpecialUse | None) -> bool:
        return role == SpecialUse.JUNK or name.lower() == "junk"

    @staticmethod
    def _is_trash(name: str, role: SpecialUse | None) -> bool:
        return role == SpecialUse.TRASH or name.lower() == "trash"

    def classify(self, event: MessagesCopied) -> str | None:
        """``"spam"``, ``"ham"`` or ``None``: what *event* (a MessagesCopied) teaches."""
        into_junk = self._is_junk(event.target, event.target_special_use)
        from_junk = self._is_junk(event.source, event.source_special_use)
        if into_junk and not from_junk:
            return "spam"
        if from_junk and not into_junk and not self._is_trash(event.target, event.target_special_use):
            return "ham"
        return None

    def messages_copied(self, event: MessagesCopied) -> None:
        """The copy listener: start learning, return at once."""
        kind = self.classify(event)
        if kind is None:
            return
        for _, target_uid in event.uids:

            def learn(uid: int = target_uid) -> defer.Deferred[None]:
                return defer.Deferred.fromCoroutine(self._learn(event, kind, uid))

            d = self._semaphore.run(learn)
            self._pending.add(d)
            d.addErrback(self._failed, event, kind, target_uid)
            d.addBoth(self._done, d)

    def _done(self, result: Any, d: defer.Deferred[Any]) -> Any:
        self._pending.discard(d)
        return result

    def _failed(self, failure: Failure, event: MessagesCopied, kind: str, uid: int) -> None:
        self.log.warn(
            "learning {kind} from {user}'s {mailbox} UID {uid} failed: {error}",
            kind=kind,
            user=event.user,
            mailbox=event.target,
            uid=uid,
            error=failure.getErrorMessage(),
            session_id=event.session_id,
        )

    def wait(self) -> defer.Deferred[Any]:
        """Fires once every learn request started so far has ended (for tests and shutdown)."""
        return defer.DeferredList(list(self._pending), consumeErrors=True)

    def stop(self) -> Any:
        pool = getattr(self.agent, "_pool", None)
        if self._own_agent and pool is not None:
            return pool.closeCachedConnections()
        return None

    async def _learn(self, event: MessagesCopied, kind: str, uid: int) -> None:
        infos = await event.target_mailbox.list_messages([uid])
        if infos and infos[0].size > self.max_size:
            self.log.info(
                "not learning {kind} from a message of {size} octets", kind=kind, size=infos[0].size
            )
            return
        data = await event.read_message(uid)
        headers = {"Deliver-To": [event.user]}
        if self.password:
            headers["Password"] = [self.password]
        url = f"{self.controller_url}/learn{kind}"
        for delay in (*self.retry_delays, None):
            try:
                status, content = await _request(
                    self.agent, self.clock, url, headers, io.BytesIO(data), self.timeout
                )
            except RspamdError as e:
                if delay is None:
                    raise
                error = str(e)
            else:
                if status < 500 or delay is None:
                    break
                error = f"HTTP {status}: {content[:200].decode('utf-8', 'replace')}"
            self.log.info(
                "learning {kind} failed ({error}); trying again in {delay:g} s",
                kind=kind,
                error=error,
                delay=delay,
            )
            await task.deferLater(self.clock, delay, lambda: None)
        if status == 200:
            self.log.info(
                "learnt {kind} from {user}'s {mailbox} UID {uid}",
                kind=kind,
                user=event.user,
                mailbox=event.target,
                uid=uid,
                session_id=event.session_id,
            )
            return
        error = content[:300].decode("utf-8", "replace")
        if "already learned" in error:
            self.log.info("rspamd already learnt this {kind}: {error}", kind=kind, error=error)
            return
        raise RspamdError(f"{url} answered HTTP {status}: {error}")


def build_rspamd(
    settings: RspamdSettings, *, reactor: Any = None
) -> tuple[RspamdPolicy, RspamdLearner | None]:
    """The scanning policy and, when ``learn`` is on, the IMAP learner of *settings*."""
    policy = RspamdPolicy(
        settings.url,
        reactor=reactor,
        timeout=settings.timeout,
        fail_action=settings.fail_action,
        roles=settings.listeners,
        max_size=settings.max_size,
    )
    learner = None
    if settings.learn:
        learner = RspamdLearner(
            settings.controller_url,
            password=settings.password,
            reactor=reactor,
            max_size=settings.max_size,
        )
    return policy, learner
