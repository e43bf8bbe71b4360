"""
JMAP over HTTP (RFC 8620): the twisted.web side of :mod:`txmail.jmap`.

* :mod:`txmail.web.api`: request processing, sans-IO (parsing, request-level
  errors, dispatch, result references, the session object);
* :mod:`txmail.web.tokens`: the bearer tokens of the web client;
* :mod:`txmail.web.blobs`: the upload store (RFC 8620 section 6.1);
* :mod:`txmail.web.push`: the EventSource push channel (section 7.3);
* :mod:`txmail.web.resource`: the twisted.web resources and their ``Site``;
* :mod:`txmail.web.service`: the site :func:`txmail.service.build_service`
  listens with (``[web] listen``), and the sweep of expired uploads.

The capabilities the endpoint serves come from one function,
:func:`capabilities`.
"""

from __future__ import annotations

from typing import Any

from txmail.jmap import mail
from txmail.jmap.core import Capability, Limits
from txmail.web.api import core_capability

__all__ = ["capabilities", "limits"]


def limits(server: Any) -> Limits:
    """
    The core limits the endpoint of *server* advertises and enforces: its
    settings' ``[web]`` limits, or the defaults without a server.
    """
    settings = getattr(server, "settings", None)
    if settings is None:
        return Limits()
    return Limits(
        max_size_upload=settings.web_max_size_upload,
        max_concurrent_upload=settings.web_max_concurrent_upload,
        max_size_request=settings.web_max_size_request,
        max_concurrent_requests=settings.web_max_concurrent_requests,
        max_calls_in_request=settings.web_max_calls_in_request,
        max_objects_in_get=settings.web_max_objects_in_get,
        max_objects_in_set=settings.web_max_objects_in_set,
    )


def capabilities(server: Any) -> list[Capability]:
    """
    The JMAP capabilities *server* (a :class:`txmail.service.MailServer`, or
    ``None`` in tests) serves: the core capability (RFC 8620 section 2), and
    the mail capabilities once they are registered here.
    """
    in_force = limits(server)
    return [core_capability(in_force), *mail.capabilities(in_force)]
