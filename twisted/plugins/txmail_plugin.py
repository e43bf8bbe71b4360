"""
``twistd mailserver``: glue only.  Options in, :func:`txmail.service.build_service` out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

if TYPE_CHECKING:
    from txmail.config import Settings
    from txmail.service import MailServer


class Options(usage.Options):
    """Command-line options of ``twistd mailserver``; they override ``--config``."""

    synopsis = "[options]"
    longdesc = (
        "Run a txmail mail server. With no options it serves the embedded default: "
        "a Maildir store under ./txmail-data, SMTP on 127.0.0.1:2525, submission on "
        "127.0.0.1:2587, local domain 'localhost'. Endpoint options take Twisted endpoint "
        "strings (tcp:25, tcp:587:interface=0.0.0.0, ssl:465 for implicit TLS) and may be "
        "repeated."
    )
    optParameters = [
        ["config", "c", None, "TOML configuration file."],
        ["data-dir", None, None, "Data directory (mail, users, queue). Default ./txmail-data."],
        ["hostname", None, None, "Host name for greetings and Received: headers."],
        ["tls-cert", None, None, "PEM certificate (chain) file; with --tls-key enables STARTTLS."],
        ["tls-key", None, None, "PEM private key file."],
        [
            "plaintext-auth",
            None,
            None,
            "Password authentication without TLS: never | loopback | always (default loopback).",
        ],
        ["relay-port", None, None, "Port to connect to on remote MX hosts (default 25).", int],
        [
            "workers",
            None,
            None,
            "SMTP receiving processes (default: the number of CPUs; 1 runs everything in one process).",
            int,
        ],
        ["log-format", None, None, "Log lines: text (twistd's, the default) | json (one object per line)."],
        [
            "smarthost",
            None,
            None,
            "Send all outbound mail through HOST:PORT (credentials: [outbound] smarthost_user/"
            "smarthost_password in the config).",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # usage.Options.__init__ is untyped
        self["domain"] = []
        self["smtp"] = []
        self["submission"] = []
        self["lmtp"] = []
        self["pop3"] = []
        self["imap"] = []
        self["web"] = []
        self["autoconfig"] = []
        self["managesieve"] = []
        self["resolver"] = []
        self["metrics"] = []

    def opt_domain(self, name: str) -> None:
        """A local domain (repeatable; the first is the primary). Default localhost."""
        self["domain"].append(name)

    def opt_smtp(self, endpoint: str) -> None:
        """SMTP (MTA role) listener endpoint (repeatable). Default tcp:2525:interface=127.0.0.1."""
        self["smtp"].append(endpoint)

    def opt_submission(self, endpoint: str) -> None:
        """Submission listener endpoint (repeatable). Default tcp:2587:interface=127.0.0.1."""
        self["submission"].append(endpoint)

    def opt_lmtp(self, endpoint: str) -> None:
        """LMTP listener endpoint (repeatable), e.g. unix:/run/txmail/lmtp or tcp:24. Default none."""
        self["lmtp"].append(endpoint)

    def opt_pop3(self, endpoint: str) -> None:
        """POP3 listener endpoint (repeatable), e.g. tcp:110 or ssl:995. Default none."""
        self["pop3"].append(endpoint)

    def opt_imap(self, endpoint: str) -> None:
        """IMAP listener endpoint (repeatable), e.g. tcp:143 or ssl:993. Default none."""
        self["imap"].append(endpoint)

    def opt_web(self, endpoint: str) -> None:
        """JMAP (HTTP) listener endpoint (repeatable), e.g. ssl:443 or tcp:8080:interface=127.0.0.1. Default none."""
        self["web"].append(endpoint)

    def opt_autoconfig(self, endpoint: str) -> None:
        """Mail client autoconfiguration (HTTP) listener endpoint (repeatable), e.g. tcp:80. Default none."""
        self["autoconfig"].append(endpoint)

    def opt_managesieve(self, endpoint: str) -> None:
        """ManageSieve (RFC 5804) listener endpoint (repeatable), e.g. tcp:4190. Default none."""
        self["managesieve"].append(endpoint)

    def opt_resolver(self, address: str) -> None:
        """DNS server HOST:PORT for MX lookups and the policy checks (repeatable). Default the system's."""
        self["resolver"].append(address)

    def opt_metrics(self, endpoint: str) -> None:
        """Prometheus /metrics and /health listener endpoint (repeatable), e.g. tcp:9125:interface=127.0.0.1. Default none; needs txmail[metrics]."""
        self["metrics"].append(endpoint)

    def postOptions(self) -> None:
        from txmail.config import load_config
        from txmail.errors import ConfigError

        overrides = {
            "data_dir": self["data-dir"],
            "hostname": self["hostname"],
            "domains": self["domain"],
            "smtp": self["smtp"],
            "submission": self["submission"],
            "lmtp": self["lmtp"],
            "pop3": self["pop3"],
            "imap": self["imap"],
            "web": self["web"],
            "autoconfig_listen": self["autoconfig"],
            "managesieve": self["managesieve"],
            "tls_cert": self["tls-cert"],
            "tls_key": self["tls-key"],
            "plaintext_auth": self["plaintext-auth"],
            "resolvers": self["resolver"],
            "relay_port": self["relay-port"],
            "smarthost": self["smarthost"],
            "workers": self["workers"],
            "metrics_listen": self["metrics"],
            "log_format": self["log-format"],
        }
        # A repeatable option not given is None (the file's value or the
        # default stands); an empty list would be "none of these".
        overrides = {k: None if v == [] else v for k, v in overrides.items()}
        self.overrides = overrides
        try:
            self.settings = load_config(self["config"], overrides)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


@implementer(IServiceMaker, IPlugin)
class MailServerMaker:
    tapname = "mailserver"
    description = "A txmail mail server (SMTP, submission; Maildir storage)."
    options = Options

    def makeService(self, options: Options) -> MailServer:
        from txmail.service import build_service, tune_gc

        # This process is the mail server's own: tune its garbage collector
        # (an application embedding build_service keeps its own settings).
        settings = options.settings
        tune_gc(settings.gc_threshold)
        if settings.workers is None:
            # A server of its own: SMTP on every core (an embedder's build_service runs one process).
            import dataclasses
            import os

            settings = dataclasses.replace(settings, workers=os.cpu_count() or 1)
        from txmail.errors import DatabaseError

        try:
            server = build_service(settings)
        except DatabaseError as e:  # PostgreSQL unreachable, or its schema needs `txmail db upgrade`
            raise SystemExit(f"txmail: {e}") from None
        _live_change(server, options)
        return server


def _live_change(server: MailServer, options: Options) -> None:
    """SIGHUP reloads the --config file (with the same command-line overrides); see txmail.lifecycle."""
    import dataclasses

    from twisted.internet import reactor

    from txmail.config import load_config
    from txmail.lifecycle import install_signal_handlers

    workers = server.settings.workers

    def load() -> Settings:
        settings = load_config(options["config"], options.overrides)
        if settings.workers is None:
            settings = dataclasses.replace(settings, workers=workers)
        return settings

    server.config_loader = load
    reactor.callWhenRunning(install_signal_handlers, server, reactor)


serviceMaker = MailServerMaker()
