"""
Forwarding to other domains: what the router does to a message that one
of its aliases sends on to an address elsewhere, so that the next hop can
still trust it.

* **SRS** (the Sender Rewriting Scheme; :mod:`txmail.policy.srs`): the
  envelope sender of the forwarded copy is rewritten into our own domain
  (``SRS0=HHHH=TT=orig.example=user@our.domain``), so the next hop's SPF
  check sees our server sending for our domain and passes.  A bounce sent
  back to that address is accepted by the router (its hash and age are
  checked) and goes to the original sender.  The null sender, a sender in
  one of our own domains and mail from authenticated users are not
  rewritten (they are ours to send).
* **ARC** (RFC 8617; :mod:`txmail.policy.arc`): the forwarded copy gets an
  ARC set sealed with our key, carrying the results our inbound checks
  wrote in our ``Authentication-Results`` field (found at the top of the
  message by our authserv-id), with ``cv=`` from its ``arc=`` result.  A
  receiver that trusts us as a sealer can then use our SPF/DKIM/DMARC
  verdicts although the forwarding broke SPF (and a list footer DKIM).  A
  message carrying an ARC chain we did not verify is not sealed (the chain
  status would be unknown).

The server's own notices (DSNs) are DKIM-signed by the router with
:class:`txmail.policy.authentication.MessageSigner`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from txmail.model import MessageSource

__all__ = ["Forwarding", "own_results"]


def _header_section(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[: end + 2]


def own_results(data: bytes, authserv_id: str) -> str | None:
    """
    The resinfo list (after ``authserv-id;``) of the first
    ``Authentication-Results`` field of *data* written by *authserv_id*,
    unfolded, or ``None``.
    """
    from txmail.policy.authres import authserv_id_of

    section = _header_section(data)
    fields: list[bytes] = []
    for line in section.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b" " + line.strip()
        elif line:
            fields.append(line)
    for field in fields:
        name, _, value = field.partition(b":")
        if name.strip().lower() != b"authentication-results":
            continue
        if (authserv_id_of(value) or "").lower() != authserv_id.lower():
            continue
        text = value.decode("utf-8", "replace").strip()
        _, semicolon, rest = text.partition(";")
        return rest.strip() if semicolon else "none"
    return None


class Forwarding:
    """
    SRS and ARC sealing for forwarded copies (see the module notes).

    Args:
        srs: a :class:`txmail.policy.srs.SRS`, or ``None`` for no rewriting.
        seal_key: an ``rsa-sha256`` signing key for ARC, or ``None`` for no sealing.
        authserv_id: our authserv-id (whose results are sealed).
        is_local: ``is_local(domain)``: whether a domain is ours.
        run_blocking: runs the sealing off the reactor thread.
        clock: the time for SRS timestamps and ``t=``.
    """

    log = Logger()

    def __init__(
        self,
        *,
        srs: Any = None,
        seal_key: Any = None,
        authserv_id: str = "",
        is_local: Callable[[str], bool] = lambda domain: False,
        run_blocking: Callable[..., defer.Deferred[Any]],
        clock: Any,
    ) -> None:
        self.srs = srs
        self.seal_key = seal_key
        self.authserv_id = authserv_id
        self.is_local = is_local
        self.run_blocking = run_blocking
        self.clock = clock

    def sender(self, mail_from: str, *, authenticated: bool = False) -> str:
        """The envelope sender of a forwarded copy of mail from *mail_from*."""
        if self.srs is None or not mail_from or authenticated:
            return mail_from
        domain = mail_from.rpartition("@")[2]
        if self.is_local(domain.lower().rstrip(".")):
            return mail_from
        from txmail.policy.srs import SRSError

        try:
            return str(self.srs.forward(mail_from, self.clock.seconds()))
        except SRSError:
            return mail_from

    def original(self, address: str) -> str | None:
        """
        The original sender behind one of our SRS addresses (a bounce
        coming back), or ``None`` when *address* is not one or does not
        check out (bad hash, too old).
        """
        if self.srs is None:
            return None
        from txmail.policy.srs import SRSError, is_srs

        if not is_srs(address):
            return None
        try:
            return str(self.srs.reverse(address, self.clock.seconds()))
        except SRSError as e:
            self.log.info("SRS address {address} refused: {error}", address=address, error=str(e))
            return None

    @defer.inlineCallbacks
    def seal(self, message: MessageSource) -> Any:
        """
        Fires with a :class:`MessageSource` of *message* with our ARC set
        on top (in memory), or ``None`` when it is not sealed.
        """
        if self.seal_key is None:
            return None
        data = message.data if message.data is not None else (yield self.run_blocking(message.read))
        results = own_results(data, self.authserv_id)
        if results is None:
            return None
        cv = "none"
        for part in results.split(";"):
            method, _, value = part.strip().partition("=")
            if method.strip().lower() == "arc":
                cv = value.split()[0].lower() if value.split() else "none"
        if cv == "none" and b"arc-seal:" in _header_section(data).lower():
            return None  # a chain we did not verify
        from txmail.policy import arc

        try:
            fields = yield self.run_blocking(
                functools.partial(
                    arc.arc_seal,
                    authserv_id=self.authserv_id,
                    auth_results=results,
                    chain_validation=cv,
                    now=self.clock.seconds(),
                ),
                data,
                self.seal_key,
            )
        except ValueError as e:
            self.log.info("not sealing a forwarded message: {error}", error=str(e))
            return None
        if not fields:
            return None
        return MessageSource.from_bytes(fields + data)
