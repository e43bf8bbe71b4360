"""
The autoconfiguration resources (txmail.web.autoconfig) on twisted.web's
DummyRequest, without a server: a directory that answers with Deferreds,
a directory that fails, case-insensitive paths, HEAD.
"""

from __future__ import annotations

import plistlib
import xml.etree.ElementTree as ET
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import server
from twisted.web.resource import getChildForRequest

from tests.autoconfig.test_documents import request_body
from tests.webmail._requests import Request, wire
from txmail.autoconfig import ClientOffer, MailService
from txmail.web.autoconfig import AutoconfigEndpoint, AutoconfigSite, _Folder, mount_autoconfig

OFFER = ClientOffer(
    "mail.example.test",
    (MailService("imap", 993, True), MailService("smtp", 465, True), MailService("smtp", 587, False)),
)


def tree(is_local_domain: Any) -> _Folder:
    root = _Folder()
    mount_autoconfig(root, AutoconfigEndpoint(offer=lambda: OFFER, is_local_domain=is_local_domain))
    return root


def render(root: Any, request: Request) -> Request:
    """Traverse *root* for *request* and render it (synchronously: the tests' directories answer at once)."""
    resource = getChildForRequest(root, request)
    result = resource.render(request)
    if result is not server.NOT_DONE_YET:
        request.write(result)
        request.finish()
    return request


class ResourceTests(SynchronousTestCase):
    """The resources' answers."""

    def test_deferred_directory(self) -> None:
        """A directory that answers is_local_domain with a Deferred (as a networked one may) works."""
        root = tree(lambda domain: defer.succeed(domain == "example.test"))
        request = render(root, Request(b"/mail/config-v1.1.xml?emailaddress=a@example.test"))
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(ET.fromstring(request.body()).findtext("emailProvider/domain"), "example.test")
        request = render(root, Request(b"/mail/config-v1.1.xml?emailaddress=a@example.org"))
        self.assertEqual(request.responseCode, 404)

    def test_failing_directory(self) -> None:
        """A directory failure is a 500 with no detail, and is logged."""

        def broken(domain: str) -> bool:
            raise OSError("directory down")

        request = render(tree(broken), Request(b"/mail/apple.mobileconfig?emailaddress=a@example.test"))
        self.assertEqual(request.responseCode, 500)
        self.assertNotIn(b"directory down", request.body())
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_paths_any_case(self) -> None:
        """Outlook's path spellings and the well-known path all reach their documents."""
        root = tree(lambda domain: True)
        for path in (
            b"/AutoDiscover/AutoDiscover.xml?emailaddress=a@example.test",
            b"/autodiscover/AUTODISCOVER.XML?emailaddress=a@example.test",
            b"/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=a@example.test",
        ):
            self.assertEqual(render(root, Request(path)).responseCode, 200, path)
        self.assertEqual(render(root, Request(b"/autodiscover/other.xml")).responseCode, 404)

    def test_headers(self) -> None:
        """Documents are not cached nor sniffed; the profile is an attachment of its media type."""
        request = render(
            tree(lambda d: True), Request(b"/mail/apple.mobileconfig?emailaddress=a@example.test")
        )
        self.assertEqual(request.header(b"content-type"), "application/x-apple-aspen-config")
        self.assertEqual(request.header(b"cache-control"), "no-store")
        self.assertEqual(request.header(b"x-content-type-options"), "nosniff")
        [mail] = plistlib.loads(request.body())["PayloadContent"]
        self.assertEqual(
            (mail["IncomingMailServerPortNumber"], mail["OutgoingMailServerPortNumber"]), (993, 465)
        )

    def test_autodiscover_body_limit(self) -> None:
        """A request the site marked too large is refused with error 600."""
        request = Request(b"/autodiscover/autodiscover.xml", b"POST", body=b"<x/>")
        request.body_too_large = True  # type: ignore[attr-defined]
        render(tree(lambda d: True), request)
        self.assertEqual(request.responseCode, 400)
        self.assertIn(b"<ErrorCode>600</ErrorCode>", request.body())


class SiteWireTests(SynchronousTestCase):
    """The ``[autoconfig] listen`` site, fed raw HTTP."""

    def wire(self, data: bytes) -> bytes:
        site = AutoconfigSite(AutoconfigEndpoint(offer=lambda: OFFER, is_local_domain=lambda d: True))
        return wire(self, site, data)

    def test_post_content_type_not_parsed(self) -> None:
        """
        An Autodiscover POST is read as XML, not as a form: a Content-Type
        Python's e-mail parser raises on (or takes seconds over) still gets
        the document, and nothing is logged.
        """
        body = request_body("a@example.test")
        for ctype in (b"text/xml; a*", b"text/xml\x0b; a=b", b"a/b; a=" + b'"' * 16_000):
            answer = self.wire(
                b"POST /autodiscover/autodiscover.xml HTTP/1.1\r\nHost: h\r\nContent-Type: "
                + ctype
                + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
                + body
            )
            self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), (ctype[:30], answer[:100]))
            self.assertIn(b"mail.example.test", answer)
        self.assertEqual(self.flushLoggedErrors(), [])
