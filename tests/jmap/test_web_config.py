"""
The ``[web]`` settings, their validation, ``twistd mailserver --web`` and
the web listener ``build_service`` starts (``ssl:`` with the server's
certificate, over real HTTPS).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
from types import SimpleNamespace
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests._certs import make_certificate
from tests.e2e._server import start_server
from txmail.config import Settings, load_config
from txmail.errors import ConfigError
from txmail.jmap.core import MAIL, Limits
from txmail.web import capabilities as web_capabilities
from txmail.web import limits as web_limits


class SettingsTests(SynchronousTestCase):
    def load(self, text: str) -> Settings:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return load_config(path)

    def test_defaults(self) -> None:
        settings = Settings.validated()
        self.assertEqual(settings.web, ())
        self.assertFalse(settings.web_tls_proxy)
        self.assertEqual(settings.web_token_idle_timeout, 3600.0)
        self.assertEqual(settings.web_max_event_streams, 8)

    def test_table(self) -> None:
        settings = self.load(
            "[web]\n"
            'listen = ["tcp:8080:interface=0.0.0.0", "unix:/run/txmail/jmap"]\n'
            "tls_proxy = true\n"
            'token_idle_timeout = "15m"\n'
            "max_event_streams = 3\n"
        )
        self.assertEqual(settings.web, ("tcp:8080:interface=0.0.0.0", "unix:/run/txmail/jmap"))
        self.assertTrue(settings.web_tls_proxy)
        self.assertEqual(settings.web_token_idle_timeout, 900.0)
        self.assertEqual(settings.web_max_event_streams, 3)

    def test_limits(self) -> None:
        """The core limits of RFC 8620 section 2 come from [web]; the endpoint advertises them."""
        settings = self.load(
            "[web]\nmax_calls_in_request = 2\nmax_size_upload = 1000\nmax_objects_in_get = 7\n"
        )
        limits = web_limits(SimpleNamespace(settings=settings))
        self.assertEqual(
            (limits.max_calls_in_request, limits.max_size_upload, limits.max_objects_in_get), (2, 1000, 7)
        )
        self.assertEqual(limits.max_size_request, Limits().max_size_request)
        self.assertEqual(web_limits(None), Limits())
        # The mail account's attachment limit is the same number (Email/set create enforces it).
        (mail_capability,) = [
            c for c in web_capabilities(SimpleNamespace(settings=settings)) if c.urn == MAIL
        ]
        self.assertEqual(mail_capability.account("alice@example.test")["maxSizeAttachmentsPerEmail"], 1000)
        for values in (
            {"web_max_calls_in_request": 0},
            {"web_max_size_request": "10M"},
            {"web_max_objects_in_set": True},
        ):
            self.assertRaises(ConfigError, Settings.validated, **values)

    def test_plain_http_only_on_loopback(self) -> None:
        for endpoint in (
            "tcp:8080:interface=127.0.0.1",
            "tcp6:8080:interface=\\:\\:1",
            "tcp:8080:interface=localhost",
        ):
            self.assertEqual(Settings.validated(web=[endpoint]).web, (endpoint,))
        for endpoint in ("tcp:8080", "tcp:port=8080:interface=0.0.0.0", "tcp:8080:interface=192.0.2.1"):
            e = self.assertRaises(ConfigError, Settings.validated, web=[endpoint])
            self.assertIn("tls_proxy", str(e))
            self.assertEqual(Settings.validated(web=[endpoint], web_tls_proxy=True).web, (endpoint,))

    def test_ssl_needs_a_certificate(self) -> None:
        e = self.assertRaises(ConfigError, Settings.validated, web=["ssl:443"])
        self.assertIn("certificate", str(e))

    def test_invalid_values(self) -> None:
        for values in (
            {"web_tls_proxy": "yes"},
            {"web_max_event_streams": 0},
            {"web_max_event_streams": True},
            {"web_token_idle_timeout": 0},
            {"web_token_idle_timeout": "soon"},
            {"web": [1]},
        ):
            self.assertRaises(ConfigError, Settings.validated, **values)

    def test_proxy_protocol_on_a_web_listener(self) -> None:
        settings = Settings.validated(
            web=["tcp:8080:interface=127.0.0.1"], proxy_protocol=["tcp:8080:interface=127.0.0.1"]
        )
        self.assertEqual(settings.proxy_protocol, ("tcp:8080:interface=127.0.0.1",))

    def test_plugin_option(self) -> None:
        import twisted.plugins
        from twisted.application.service import IServiceMaker
        from twisted.plugin import getPlugins

        [maker] = [
            p
            for p in getPlugins(IServiceMaker, twisted.plugins)
            if getattr(p, "tapname", None) == "mailserver"
        ]
        options = maker.options()  # type: ignore[attr-defined]
        options.parseOptions(
            [
                "--data-dir",
                self.mktemp(),
                "--web",
                "tcp:0:interface=127.0.0.1",
                "--web",
                "tcp:1:interface=127.0.0.1",
            ]
        )
        self.assertEqual(options.settings.web, ("tcp:0:interface=127.0.0.1", "tcp:1:interface=127.0.0.1"))


class HTTPSListenerTests(TestCase):
    """An ``ssl:`` web listener serves with the ``[tls]`` certificate; its URLs are https."""

    timeout = 30

    @defer.inlineCallbacks
    def test_https(self) -> Any:
        ca, cert, key = make_certificate(os.path.abspath(self.mktemp()))
        server = yield start_server(self, web=["ssl:0:interface=127.0.0.1"], tls_cert=cert, tls_key=key)
        server.directory.add_user("alice@example.test", "pw")
        host, port = server.address("web")
        self.assertEqual(len(server.listeners_for("web")), 1)

        def get() -> tuple[int, Any]:
            context = ssl.create_default_context(cafile=ca)
            connection = http.client.HTTPSConnection(host, port, context=context, timeout=10)
            try:
                auth = base64.b64encode(b"alice@example.test:pw").decode()
                connection.request("GET", "/jmap/session", headers={"Authorization": "Basic " + auth})
                response = connection.getresponse()
                return response.status, json.loads(response.read())
            finally:
                connection.close()

        status, session = yield deferToThread(get)
        self.assertEqual(status, 200)
        self.assertEqual(session["apiUrl"], f"https://{host}:{port}/jmap/api")


class ConfiguredLimitsTests(TestCase):
    """The [web] limits reach the running endpoint: advertised in the session and enforced."""

    timeout = 30

    @defer.inlineCallbacks
    def test_max_calls_in_request(self) -> Any:
        server = yield start_server(self, web=["tcp:0:interface=127.0.0.1"], web_max_calls_in_request=2)
        server.directory.add_user("alice@example.test", "pw")
        host, port = server.address("web")
        auth = "Basic " + base64.b64encode(b"alice@example.test:pw").decode()

        def request(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            connection = http.client.HTTPConnection(host, port, timeout=10)
            try:
                headers = {"Authorization": auth, "Content-Type": "application/json"}
                connection.request(
                    method, path, body=None if body is None else json.dumps(body), headers=headers
                )
                response = connection.getresponse()
                return response.status, json.loads(response.read())
            finally:
                connection.close()

        def run() -> None:
            status, session = request("GET", "/jmap/session")
            self.assertEqual(session["capabilities"]["urn:ietf:params:jmap:core"]["maxCallsInRequest"], 2)
            calls = [["Core/echo", {"n": n}, f"c{n}"] for n in range(3)]
            status, problem = request(
                "POST", "/jmap/api", {"using": ["urn:ietf:params:jmap:core"], "methodCalls": calls}
            )
            self.assertEqual(status, 400)
            self.assertEqual(
                (problem["type"], problem["limit"]), ("urn:ietf:params:jmap:error:limit", "maxCallsInRequest")
            )
            status, answer = request(
                "POST", "/jmap/api", {"using": ["urn:ietf:params:jmap:core"], "methodCalls": calls[:2]}
            )
            self.assertEqual((status, len(answer["methodResponses"])), (200, 2))

        yield deferToThread(run)
