"""
The JMAP listeners of a :class:`txmail.service.MailServer` (``[web]
listen``): one :class:`txmail.web.resource.JMAPSite` serves them all, so
tokens, counters and the upload store are shared; a child service deletes
expired uploads every ten minutes.  Unless ``[autoconfig] enabled =
false``, the site also serves client autoconfiguration
(:mod:`txmail.web.autoconfig`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import task

from txmail import _twisted
from txmail.jmap.core import Registry
from txmail.web import capabilities, limits
from txmail.web.resource import JMAPSite, build_site

if TYPE_CHECKING:
    from txmail.service import MailServer

__all__ = ["UploadSweeper", "web_site"]

#: Seconds between sweeps of expired uploads.
SWEEP_INTERVAL = 600.0


class UploadSweeper(_twisted.Service):
    """Deletes expired uploads (:meth:`txmail.web.blobs.BlobStore.sweep`) while running."""

    def __init__(self, blobs: Any, clock: Any, interval: float = SWEEP_INTERVAL) -> None:
        self.blobs = blobs
        self.call = task.LoopingCall(self._sweep)
        self.call.clock = clock
        self.interval = interval

    def _sweep(self) -> Any:
        return self.blobs.sweep().addErrback(lambda f: None)

    def startService(self) -> None:
        super().startService()
        self.call.start(self.interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self.call.running:
            self.call.stop()


def web_site(settings: Any, server: MailServer, *, reactor: Any) -> JMAPSite:
    """
    The site of *server*'s ``[web] listen`` endpoints: the capabilities of
    :func:`txmail.web.capabilities`, the server's authenticator and stores,
    uploads under ``<data_dir>/jmap-uploads``.  Adds the upload sweeper to
    *server*.
    """
    site = build_site(
        registry=Registry(capabilities(server)),
        limits=limits(server),
        authenticator=server.authenticator,
        stores=server.stores,
        blob_dir=settings.path("jmap-uploads"),
        clock=reactor,
        run_blocking=server.run_blocking,
        server=server,
        token_idle_timeout=settings.web_token_idle_timeout,
        plaintext_auth=settings.plaintext_auth,
        tls_proxy=settings.web_tls_proxy,
        proxy_trusted=settings.proxy_trusted,
        max_event_streams=settings.web_max_event_streams,
        realm=settings.hostname,
    )
    UploadSweeper(site.endpoint.blobs, reactor).setServiceParent(server)
    if settings.autoconfig_enabled:
        # Client autoconfiguration beside JMAP (txmail.web.autoconfig).
        from txmail.web.autoconfig import AutoconfigEndpoint, mount_autoconfig

        mount_autoconfig(site.resource, AutoconfigEndpoint.for_server(server))
    return site
