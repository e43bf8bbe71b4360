"""
The server of ``benchmarks/sieve_ingest.py`` (not a benchmark itself): txmail's service
(:func:`txmail.service.build_service`, the Maildir store under ``--data-dir``, SMTP on
``--port``) with users ``user1..userN`` in a memory directory, and, with ``--script FILE``,
that Sieve script active for every user.

The script is served by a thin wrapper around each Maildir store that provides
:class:`txmail.interfaces.ISieveScripts` from memory (the Maildir backend's own script
storage is another branch's work): the router finds it exactly as it finds a store's
scripts, so what is measured is the router's Sieve path (look-up, cached compile, run,
actions) on top of ordinary Maildir delivery.  Without ``--script`` the same wrapper says
"no active script", so both modes pay the same look-up.

Run by the benchmark with the txmail venv's Python; prints ``LISTENING <port>`` once SMTP
listens.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.internet import defer, reactor
from zope.interface import directlyProvides, providedBy

from txmail.config import load_config
from txmail.directory import MemoryDirectory
from txmail.interfaces import ISieveScripts
from txmail.service import build_service


class ScriptedStore:
    """A store with one active Sieve script (or none), everything else delegated."""

    def __init__(self, inner: Any, active: tuple[str, bytes] | None) -> None:
        self._inner = inner
        self._active = active
        directlyProvides(self, *providedBy(inner), ISieveScripts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def active_script(self) -> defer.Deferred[tuple[str, bytes] | None]:
        return defer.succeed(self._active)

    def list_scripts(self) -> defer.Deferred[list[tuple[str, bool]]]:
        return defer.succeed([] if self._active is None else [(self._active[0], True)])

    def get_script(self, name: str) -> defer.Deferred[bytes]:
        from txmail.errors import NoSuchScript

        if self._active is not None and name == self._active[0]:
            return defer.succeed(self._active[1])
        return defer.fail(NoSuchScript(name))


class ScriptedProvider:
    """Wraps the Maildir provider (and provides what it provides): its stores carry the benchmark's script."""

    def __init__(self, inner: Any, active: tuple[str, bytes] | None) -> None:
        self.inner = inner
        self.active = active
        self.stores: dict[str, ScriptedStore] = {}
        directlyProvides(self, *providedBy(inner))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def store_for(self, user: str) -> Any:
        found = self.stores.get(user)
        if found is not None:
            return defer.succeed(found)

        def wrap(store: Any) -> ScriptedStore:
            return self.stores.setdefault(user, ScriptedStore(store, self.active))

        return defer.maybeDeferred(self.inner.store_for, user).addCallback(wrap)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--domain", default="example.test")
    p.add_argument("--users", type=int, default=10)
    p.add_argument("--script", default=None, help="a Sieve script file, active for every user")
    args = p.parse_args()
    settings = load_config(
        None,
        {
            "data_dir": args.data_dir,
            "domains": [args.domain],
            "hostname": "bench.test",
            "smtp": [f"tcp:{args.port}:interface=127.0.0.1"],
            "submission": [],
            "outbound_enabled": False,
        },
    )
    directory = MemoryDirectory(local_domains=[args.domain])
    for i in range(1, args.users + 1):
        directory.add_user(f"user{i}@{args.domain}", "pass")
    server = build_service(settings, reactor=reactor, directory=directory)
    active = None
    if args.script:
        with open(args.script, "rb") as f:
            active = ("bench", f.read())
    server.router.stores = ScriptedProvider(server.router.stores, active)
    server.startService()
    server.when_listening().addCallback(lambda _: print(f"LISTENING {args.port}", flush=True))
    reactor.addSystemEventTrigger("before", "shutdown", server.stopService)
    reactor.run()


if __name__ == "__main__":
    sys.exit(main())
