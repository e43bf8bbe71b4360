"""
SMTP TLS Reporting (RFC 8460): count the TLS outcome of each delivery
attempt made under a policy (MTA-STS or DANE), per recipient domain and UTC
day, and send each domain a daily report.

Theory of operation
===================

* :meth:`TLSReports.record` adds one session to the counts of
  ``(day, policy domain, policy)``: a success, or a failure with its RFC
  8460 section 4.3 result type, the MX host and its address.  The counts are
  kept in ``<data_dir>/tls-rpt.json`` (written at most every
  ``flush_interval`` seconds and when the service stops, atomically), so a
  restart loses at most that much.
* Once a day, shortly after midnight UTC (an injected clock: tests call
  :meth:`TLSReports.send_reports`), the counts of every finished day are
  turned into one report per domain (section 4.4's JSON), looked up against
  the domain's ``_smtp._tls`` TXT record (section 3: ``v=TLSRPTv1;
  rua=...``) and sent to each ``rua``: ``mailto:`` as a
  ``multipart/report; report-type="tlsrpt"`` message with the gzipped JSON
  as an ``application/tlsrpt+gzip`` attachment (section 5.3: the
  ``TLS-Report-Domain`` and ``TLS-Report-Submitter`` header fields and the
  ``Report Domain: ... Submitter: ... Report-ID: <...>`` subject), through
  our own router and queue; ``https:`` as a POST of the gzipped JSON
  (section 5.2).  A domain without a record gets nothing.  The day's counts
  for the domain are dropped once the report was handed over (or there was
  nowhere to send it).
"""

from __future__ import annotations

import datetime
import email.utils
import gzip
import json
import os
import uuid
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote

from twisted.internet import defer
from twisted.logger import Logger

from txmail.interfaces import IDeliveryRouter, IDirectory, IQueue
from txmail.smtp import grammar
from txmail.tlsverify import TLSFailure

__all__ = [
    "TLSReports",
    "build_transport_security",
    "mailto_address",
    "parse_tlsrpt_record",
    "report_message",
]


def parse_tlsrpt_record(records: Sequence[bytes | str]) -> list[str]:
    """The ``rua`` URIs of the ``_smtp._tls`` TXT records (RFC 8460 section 3); ``[]`` when none is valid."""
    found = []
    for record in records:
        text = record.decode("utf-8", "replace") if isinstance(record, bytes) else record
        if text.startswith("v=TLSRPTv1"):
            found.append(text)
    if len(found) != 1:
        return []
    for part in found[0].split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key.strip() == "rua":
            uris = [u.strip() for u in value.split(",") if u.strip()]
            return [
                u
                for u in uris
                if u.lower().startswith("https:") or (u.lower().startswith("mailto:") and mailto_address(u))
            ]
    return []


def mailto_address(uri: str) -> str | None:
    """
    The address of a ``mailto:`` rua URI: the part before any ``?`` (its
    header fields, not used), percent-decoded as UTF-8 (RFC 6068 section 2);
    ``None`` unless that is one address an SMTP client can send to
    (:func:`txmail.smtp.grammar.is_sendable_mailbox`).  The domain that
    publishes the record writes it: a line end in it would start a header
    field of the report of its own, a space or ``>`` a parameter of RCPT TO.
    """
    if not uri.lower().startswith("mailto:"):
        return None
    try:
        address = unquote(uri[len("mailto:") :].split("?", 1)[0], errors="strict")
    except UnicodeDecodeError:
        return None
    return address if grammar.is_sendable_mailbox(address) else None


def _day(now: float) -> str:
    return datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%d")


def _day_range(day: str) -> tuple[int, int]:
    start = datetime.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=datetime.UTC)
    begin = int(start.timestamp())
    return begin, begin + 86399


class TLSReports:
    """
    TLS-RPT counts and reports (see the module notes).

    Args:
        path: the JSON file of the counts (``None``: memory only).
        clock: tells the time and runs the timers.
        hostname: the submitter (our host name).
        organization: ``organization-name`` of the reports.
        contact: ``contact-info`` of the reports (an address).
        lookup_txt: ``lookup_txt(name) -> Deferred[list of TXT strings or None]``.
        send_mail: ``send_mail(rcpt, data, report_id) -> Deferred[bool]``
            (through the router and queue), or ``None``.
        post: ``post(url, body, content_type) -> Deferred[int status]``, or ``None``.
        sending: send reports daily (``[outbound] tls_reports``); the
            counts are kept either way.
        flush_interval: seconds between writes of the counts.
        keep_days: days of counts kept at most (when reports are off, or
            could not be sent).
    """

    log = Logger()

    def __init__(
        self,
        path: str | None,
        *,
        clock: Any,
        hostname: str,
        organization: str,
        contact: str,
        lookup_txt: Callable[[str], Any],
        send_mail: Callable[..., Any] | None = None,
        post: Callable[..., Any] | None = None,
        sending: bool = True,
        flush_interval: float = 60.0,
        keep_days: int = 7,
    ) -> None:
        self.path = path
        self.clock = clock
        self.hostname = hostname
        self.organization = organization
        self.contact = contact
        self.lookup_txt = lookup_txt
        self.send_mail = send_mail
        self.post = post
        self.sending = sending
        self.flush_interval = flush_interval
        self.keep_days = keep_days
        self.days: dict[str, dict[str, dict[str, Any]]] = {}
        self._flush_call: Any = None
        self._daily: Any = None
        self._stopped = False
        if path is not None and os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    self.days = json.load(f)["days"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                self.log.warn("TLS-RPT counts {path} unreadable, starting empty: {error}", path=path, error=e)

    # -- counting ---------------------------------------------------------------

    def record(
        self,
        domain: str,
        policy_type: str,
        policy_strings: Sequence[str],
        mx_host: str | None,
        failure: TLSFailure | None,
        *,
        receiving_mx: str,
        address: str,
        now: float,
    ) -> None:
        """Count one session (``failure`` ``None``: a success) under a policy of *domain*."""
        domain = domain.lower().rstrip(".")
        key = "\n".join([policy_type, mx_host or "", *policy_strings])
        day = _day(now)
        if day not in self.days:
            # A new day: forget days too old to report (reports off, or never sent).
            oldest = _day(now - self.keep_days * 86400)
            for old in [d for d in self.days if d < oldest]:
                del self.days[old]
        policies = self.days.setdefault(day, {}).setdefault(domain, {})
        entry = policies.setdefault(
            key,
            {
                "type": policy_type,
                "strings": list(policy_strings),
                "mx_host": mx_host,
                "success": 0,
                "failures": {},
            },
        )
        if failure is None:
            entry["success"] += 1
        else:
            fkey = f"{failure.result_type}|{address}|{receiving_mx}"
            item = entry["failures"].setdefault(fkey, {"count": 0, "reason": failure.detail[:200]})
            item["count"] += 1
        self._schedule_flush()

    def counts(self, day: str, domain: str) -> tuple[int, int]:
        """``(successes, failures)`` of *domain* on *day* (``YYYY-MM-DD``)."""
        policies = self.days.get(day, {}).get(domain, {})
        ok = sum(p["success"] for p in policies.values())
        failed = sum(f["count"] for p in policies.values() for f in p["failures"].values())
        return ok, failed

    def _schedule_flush(self) -> None:
        if self._stopped:
            self.flush()  # an attempt that ended after stop(): no timer left behind
            return
        if self.path is None or (self._flush_call is not None and self._flush_call.active()):
            return
        self._flush_call = self.clock.callLater(self.flush_interval, self.flush)

    def flush(self) -> None:
        """Write the counts now."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if self.path is None:
            return
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"days": self.days}, f)
            os.replace(tmp, self.path)
        except OSError as e:
            self.log.warn("cannot write the TLS-RPT counts {path}: {error}", path=self.path, error=e)

    # -- reports ------------------------------------------------------------------

    def report(self, day: str, domain: str) -> dict[str, Any]:
        """The RFC 8460 section 4.4 report of *domain* for *day*."""
        begin, end = _day_range(day)
        policies = []
        for entry in self.days.get(day, {}).get(domain, {}).values():
            policy: dict[str, Any] = {
                "policy-type": entry["type"],
                "policy-string": entry["strings"],
                "policy-domain": domain,
            }
            if entry["mx_host"]:
                policy["mx-host"] = [entry["mx_host"]]
            failures = []
            for fkey, item in entry["failures"].items():
                result_type, address, mx = fkey.split("|", 2)
                detail: dict[str, Any] = {"result-type": result_type, "failed-session-count": item["count"]}
                if mx:
                    detail["receiving-mx-hostname"] = mx
                if address:
                    detail["receiving-ip"] = address
                if item.get("reason"):
                    detail["failure-reason-code"] = item["reason"]
                failures.append(detail)
            policies.append(
                {
                    "policy": policy,
                    "summary": {
                        "total-successful-session-count": entry["success"],
                        "total-failure-session-count": sum(f["failed-session-count"] for f in failures),
                    },
                    "failure-details": failures,
                }
            )
        return {
            "organization-name": self.organization,
            "date-range": {
                "start-datetime": _iso(begin),
                "end-datetime": _iso(end),
            },
            "contact-info": self.contact,
            "report-id": f"{day}.{domain}.{uuid.uuid4().hex[:12]}@{self.hostname}",
            "policies": policies,
        }

    def send_reports(self, *, include_today: bool = False) -> defer.Deferred[list[tuple[str, str, bool]]]:
        """
        Send the reports of every finished day (and today's with
        *include_today*); fires with ``(domain, uri, sent)`` for each
        attempt.
        """
        return defer.Deferred.fromCoroutine(self._send_reports(include_today))

    async def _send_reports(self, include_today: bool) -> list[tuple[str, str, bool]]:
        today = _day(self.clock.seconds())
        outcome: list[tuple[str, str, bool]] = []
        for day in sorted(self.days):
            if day >= today and not include_today:
                continue
            for domain in list(self.days[day]):
                records = await self.lookup_txt(f"_smtp._tls.{domain}")
                uris = parse_tlsrpt_record(records or [])
                if uris:
                    report = self.report(day, domain)
                    for uri in uris:
                        try:
                            sent = await self._send(uri, day, domain, report)
                        except Exception as e:
                            self.log.info(
                                "TLS report for {domain} to {uri} failed: {error}",
                                domain=domain,
                                uri=uri,
                                error=e,
                            )
                            sent = False
                        outcome.append((domain, uri, sent))
                del self.days[day][domain]
            if not self.days[day]:
                del self.days[day]
        self.flush()
        return outcome

    async def _send(self, uri: str, day: str, domain: str, report: dict[str, Any]) -> bool:
        body = gzip.compress(json.dumps(report).encode())
        if uri.lower().startswith("mailto:"):
            if self.send_mail is None:
                return False
            rcpt = mailto_address(uri)
            if rcpt is None:
                return False
            data = report_message(
                report, body, day=day, domain=domain, hostname=self.hostname, to=rcpt, sender=self.contact
            )
            ok = bool(await self.send_mail(rcpt, data, report["report-id"]))
        else:
            if self.post is None:
                return False
            status = await self.post(uri, body, "application/tlsrpt+gzip")
            ok = 200 <= int(status) < 300
        self.log.info(
            "TLS report {report_id} for {domain} to {uri}: {outcome}",
            report_id=report["report-id"],
            domain=domain,
            uri=uri,
            outcome="sent" if ok else "failed",
        )
        return ok

    # -- the daily timer --------------------------------------------------------------

    def start(self) -> None:
        """Send the reports daily, a few minutes after midnight UTC (when *sending*)."""
        self._stopped = False
        if self.sending and self._daily is None:
            self._schedule_daily()

    def _schedule_daily(self) -> None:
        now = self.clock.seconds()
        _, end = _day_range(_day(now))
        self._daily = self.clock.callLater(end + 1 - now + 300, self._daily_run)

    def _daily_run(self) -> None:
        self._daily = None
        self.send_reports().addErrback(lambda f: self.log.failure("sending TLS reports failed", failure=f))
        self._schedule_daily()

    def stop(self) -> None:
        """Stop the timer and write the counts."""
        if self._daily is not None and self._daily.active():
            self._daily.cancel()
        self._daily = None
        self._stopped = True
        self.flush()


def _iso(ts: int) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def report_message(
    report: dict[str, Any], body: bytes, *, day: str, domain: str, hostname: str, to: str, sender: str
) -> bytes:
    """The report mail (RFC 8460 section 5.3) with the gzipped JSON *body* attached."""
    begin, end = _day_range(day)
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Date"] = email.utils.formatdate(usegmt=True)
    msg["Message-ID"] = email.utils.make_msgid(domain=hostname)
    msg["Subject"] = f"Report Domain: {domain} Submitter: {hostname} Report-ID: <{report['report-id']}>"
    msg["TLS-Report-Domain"] = domain
    msg["TLS-Report-Submitter"] = hostname
    msg.set_content(
        f"This is an aggregate TLS report (RFC 8460) from {hostname} for {domain}, for {day} (UTC).\n"
    )
    msg.add_attachment(
        body,
        maintype="application",
        subtype="tlsrpt+gzip",
        filename=f"{hostname}!{domain}!{begin}!{end}.json.gz",
    )
    msg.replace_header("Content-Type", 'multipart/report; report-type="tlsrpt"')
    # replace_header drops the boundary parameter: put it back.
    msg.set_boundary(msg.get_boundary() or uuid.uuid4().hex)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


# -- wiring ---------------------------------------------------------------------------


def build_transport_security(
    settings: Any,
    reactor: Any,
    resolver: Any,
    router: IDeliveryRouter,
    directory: IDirectory,
    queue: IQueue | None = None,
) -> Any:
    """
    The :class:`~txmail.delivery.tlspolicy.TransportSecurity` of *settings*
    (``[outbound] mta_sts``, ``dane``, ``tls_reports``, ``ca_file``; the
    MTA-STS cache in PostgreSQL when *queue* is the PostgreSQL queue), or
    ``None`` when *resolver* cannot look records up (an embedder's own) or
    nothing is on.
    """
    from txmail.delivery.mtasts import MTASTS, PolicyCache, PolicyFetcher
    from txmail.delivery.router import deliver_notice, split_address
    from txmail.delivery.tlspolicy import TransportSecurity
    from txmail.tlsverify import load_trust_root

    lookup = getattr(resolver, "lookup", None)
    if lookup is None or not (
        settings.outbound_mta_sts or settings.outbound_dane or settings.outbound_tls_reports
    ):
        return None
    trust_roots = None
    if settings.outbound_ca_file:
        with open(settings.outbound_ca_file, "rb") as f:
            trust_roots = load_trust_root(f.read())

    def lookup_txt(name: str) -> Any:
        def done(answer: Any) -> list[bytes] | None:
            if answer.status == "temp":
                return None
            return [b"".join(r.strings) for r in answer.records]

        return lookup(name, "TXT").addCallback(done)

    async def resolve_host(name: str) -> str | None:
        for rdtype in ("A", "AAAA"):
            answer = await lookup(name, rdtype)
            if answer.records:
                first = answer.records[0]
                return str(getattr(first, "address", first))
        return None

    mta_sts = None
    if settings.outbound_mta_sts:
        os.makedirs(settings.data_dir, exist_ok=True)
        fetcher = PolicyFetcher(reactor, resolve_host, trust_roots=trust_roots)
        database = getattr(queue, "database", None)
        cache: Any
        if settings.queue_backend == "postgresql" and database is not None:
            from txmail.pg.mtasts import PostgresPolicyCache

            cache = PostgresPolicyCache(database)  # shared by the nodes of the queue
        else:
            cache = PolicyCache(settings.path("mta-sts.json"))
        mta_sts = MTASTS(lookup_txt, fetcher, cache, reactor)

    def send_mail(rcpt: str, data: bytes, report_id: str) -> Any:
        return deliver_notice(
            router.deliver,
            rcpt,
            data,
            message_id=f"tlsrpt.{uuid.uuid4().hex[:12]}",
            received_at=reactor.seconds(),
            hostname=settings.hostname,
            local=bool(directory.is_local_domain(split_address(rcpt)[1])),
            sign=getattr(router, "sign_notice", None),
        )

    def post(url: str, body: bytes, content_type: str) -> Any:
        import io

        from twisted.internet import ssl
        from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, FileBodyProducer, readBody
        from twisted.web.http_headers import Headers

        trust = (
            ssl.trustRootFromCertificates([ssl.Certificate(c) for c in trust_roots]) if trust_roots else None
        )
        agent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trust), connectTimeout=60)
        d = agent.request(
            b"POST",
            url.encode("utf-8"),
            Headers({b"Content-Type": [content_type.encode()]}),
            FileBodyProducer(io.BytesIO(body)),
        )

        def got(response: Any) -> Any:
            return readBody(response).addBoth(lambda _: response.code)

        d.addCallback(got)
        d.addTimeout(120, reactor)
        return d

    reports = TLSReports(
        settings.path("tls-rpt.json"),
        clock=reactor,
        hostname=settings.hostname,
        organization=settings.hostname,
        contact=f"postmaster@{settings.primary_domain}",
        lookup_txt=lookup_txt,
        send_mail=send_mail,
        post=post,
        sending=settings.outbound_tls_reports,
    )
    return TransportSecurity(
        lookup,
        mta_sts=mta_sts,
        dane=settings.outbound_dane,
        trust_roots=trust_roots,
        reports=reports,
        clock=reactor,
    )
