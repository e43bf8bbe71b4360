"""
A throwaway rspamd (Debian's ``rspamd`` package, 3.4 here) on loopback for
tests and benchmarks::

    rspamd = start_rspamd(self)                 # in setUp (blocks until /ping answers)
    rspamd.url                                  # "http://127.0.0.1:PORT" (normal worker)
    rspamd.controller_url, rspamd.password      # controller (learning, /stat)
    rspamd = start_rspamd(self, milter=True)    # plus a proxy worker in milter mode
    rspamd.milter_port

It runs from Debian's stock ``/etc/rspamd/rspamd.conf`` with its own
``LOCAL_CONFDIR`` (``local.d``/``override.d`` overrides), ``DBDIR``,
``RUNDIR`` and ``LOGDIR`` in a temporary directory, so nothing of the
system's rspamd (configured or not) is touched:

* the workers listen on free 127.0.0.1 ports; the proxy worker only with
  ``milter=True`` (``milter = yes``, ``self_scan = yes``);
* the controller wants :attr:`RspamdInstance.password` from every client
  (``secure_ip`` is set to a TEST-NET address, so loopback is not exempt);
* nothing looks anything up on the internet: the modules that query DNS
  or remote services (rbl, surbl, emails, fuzzy_check, neural, spf, dkim,
  dmarc, arc, asn, hfilter, reputation, url_redirector, whitelist,
  mx_check, phishing, rspamd_update) are disabled, and the resolver points
  at a loopback port where nothing answers (the maps rspamd would fetch
  from maps.rspamd.com fall back to their packaged copies);
* Bayes learning uses the ``sqlite3`` backend (still in rspamd 3.4), with
  its files in the temporary directory: no redis is needed.  Nothing else
  uses redis (no ``redis`` servers are configured, so greylist, ratelimit
  and friends switch themselves off);
* hyperscan databases (rspamd compiles its ~9,600 TLD suffixes and its
  regexps into them, ~14 s of CPU on the first start) are cached in
  ``$TMPDIR/txmail-rspamd-hs-<uid>``, shared between instances: later
  starts take under a second;
* the log is ``<dir>/log/rspamd.log`` (:meth:`RspamdInstance.log`);
* as root it runs with ``--insecure`` (``-i``): rspamd refuses to run its
  workers as root without it, and ``-u _rspamd`` would need the temporary
  directory to belong to that user.

The process is stopped (SIGTERM, then SIGKILL of its process group) when
the test ends.  Without ``/usr/bin/rspamd`` the test is skipped
(:class:`~twisted.trial.unittest.SkipTest`).

``start_rspamd`` also works without a test case (``test_case=None``, for
the benchmarks): call :meth:`RspamdInstance.stop` yourself.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from twisted.trial.unittest import SkipTest

__all__ = ["GTUBE", "RspamdInstance", "rspamd_available", "start_rspamd"]

RSPAMD = "/usr/bin/rspamd"
RSPAMD_CONF = "/etc/rspamd/rspamd.conf"

#: The GTUBE line: rspamd answers "reject" to any message whose body has it.
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

#: Modules that look things up in DNS or fetch from remote services.
_NETWORK_MODULES = (
    "arc",
    "asn",
    "dkim",
    "dmarc",
    "emails",
    "fuzzy_check",
    "hfilter",
    "mx_check",
    "neural",
    "phishing",
    "rbl",
    "reputation",
    "rspamd_update",
    "spf",
    "surbl",
    "url_redirector",
    "whitelist",
)


def rspamd_available() -> str | None:
    """``None`` when rspamd can be started here, else the reason it cannot."""
    if not os.path.exists(RSPAMD):
        return f"rspamd is not installed ({RSPAMD}; Debian package rspamd)"
    if not os.path.exists(RSPAMD_CONF):
        return f"rspamd's stock configuration is missing ({RSPAMD_CONF})"
    return None


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RspamdInstance:
    """A running rspamd (see the module notes)."""

    directory: str
    http_port: int
    controller_port: int
    milter_port: int | None
    password: str
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The normal worker (``/checkv2``, ``/ping``)."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def controller_url(self) -> str:
        """The controller (``/learnspam``, ``/learnham``, ``/stat``); wants :attr:`password`."""
        return f"http://127.0.0.1:{self.controller_port}"

    @property
    def log_path(self) -> str:
        return os.path.join(self.directory, "log", "rspamd.log")

    def log(self) -> str:
        """rspamd's log so far (for failure messages)."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    # Blocking helpers (urllib): for setUp, benchmarks, or deferToThread.

    def check(self, message: bytes, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """POST *message* to ``/checkv2`` and return rspamd's JSON answer."""
        request = urllib.request.Request(
            self.url + "/checkv2", data=message, headers=headers or {}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return dict(json.load(response))

    def stat(self) -> dict[str, Any]:
        """The controller's ``/stat`` (``"learned"`` counts learnt messages)."""
        request = urllib.request.Request(self.controller_url + "/stat", headers={"Password": self.password})
        with urllib.request.urlopen(request, timeout=30) as response:
            return dict(json.load(response))

    def learn(self, kind: str, message: bytes) -> dict[str, Any]:
        """POST *message* to the controller's ``/learnspam`` or ``/learnham`` (*kind* ``"spam"``/``"ham"``)."""
        request = urllib.request.Request(
            f"{self.controller_url}/learn{kind}",
            data=message,
            headers={"Password": self.password},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return dict(json.load(response))

    def statfiles_ready(self) -> bool:
        """The controller answers ``/stat`` and lists both Bayes statfiles."""
        try:
            symbols = {s.get("symbol") for s in self.stat().get("statfiles", ())}
        except (OSError, ValueError):
            return False
        return {"BAYES_HAM", "BAYES_SPAM"} <= symbols

    def ping(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/ping", timeout=2) as response:
                return bool(response.read().strip() == b"pong")
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        """Stop rspamd (SIGTERM, up to 10 s, then SIGKILL of its process group)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _configure(
    directory: str, http_port: int, controller_port: int, milter_port: int | None, password: str
) -> None:
    local = os.path.join(directory, "local.d")
    override = os.path.join(directory, "override.d")
    for sub in ("db", "run", "log"):
        os.makedirs(os.path.join(directory, sub), exist_ok=True)
    _write(
        os.path.join(override, "worker-normal.inc"), f'bind_socket = "127.0.0.1:{http_port}";\ncount = 1;\n'
    )
    _write(
        os.path.join(override, "worker-controller.inc"),
        f'bind_socket = "127.0.0.1:{controller_port}";\n'
        "count = 1;\n"
        f'password = "{password}";\n'
        f'enable_password = "{password}";\n'
        # Loopback would be trusted without a password in the stock config.
        'secure_ip = "192.0.2.1";\n'
        'static_dir = "${WWWDIR}";\n',
    )
    if milter_port is None:
        proxy = "count = -1;\n"  # as the stock config disables the fuzzy worker
    else:
        proxy = (
            f'bind_socket = "127.0.0.1:{milter_port}";\n'
            "count = 1;\n"
            "milter = yes;\n"
            "timeout = 120s;\n"
            'upstream "local" { default = yes; self_scan = yes; }\n'
            'spam_header = "X-Spam";\n'
            'reject_message = "Spam message rejected";\n'
        )
    _write(os.path.join(override, "worker-proxy.inc"), proxy)
    _write(
        os.path.join(override, "logging.inc"),
        f'type = "file";\nfilename = "{directory}/log/rspamd.log";\nlevel = "info";\n',
    )
    hs_cache = os.path.join(tempfile.gettempdir(), f"txmail-rspamd-hs-{os.getuid()}")
    os.makedirs(hs_cache, exist_ok=True)
    _write(
        os.path.join(local, "options.inc"),
        f'hs_cache_dir = "{hs_cache}/";\n'
        f'dns {{ nameserver = ["127.0.0.1:{_free_port(socket.SOCK_DGRAM)}"]; timeout = 0.1s; retransmits = 1; }}\n',
    )
    _write(
        os.path.join(override, "classifier-bayes.conf"),
        'backend = "sqlite3";\n'
        f'statfile {{ symbol = "BAYES_HAM"; spam = false; path = "{directory}/db/bayes.ham.sqlite"; }}\n'
        f'statfile {{ symbol = "BAYES_SPAM"; spam = true; path = "{directory}/db/bayes.spam.sqlite"; }}\n'
        # The learn cache ("already learned") would be /var/lib/rspamd/learn_cache.sqlite.
        f'cache {{ type = "sqlite3"; path = "{directory}/db/learn_cache.sqlite"; }}\n',
    )
    for module in _NETWORK_MODULES:
        _write(os.path.join(local, f"{module}.conf"), "enabled = false;\n")


def start_rspamd(test_case: Any, milter: bool = False, *, timeout: float = 90.0) -> RspamdInstance:
    """
    Start a throwaway rspamd (see the module notes) and wait until its
    ``/ping`` answers.  *test_case* (a trial ``TestCase``, or ``None``) gets
    the cleanups; without one, call :meth:`RspamdInstance.stop` and remove
    :attr:`RspamdInstance.directory` yourself.

    Raises:
        SkipTest: rspamd is not installed.
        RuntimeError: it did not answer within *timeout* seconds (its log
            is in the message).
    """
    reason = rspamd_available()
    if reason is not None:
        raise SkipTest(reason)
    directory = os.path.realpath(tempfile.mkdtemp(prefix="txmail-rspamd-"))
    if test_case is not None:
        test_case.addCleanup(shutil.rmtree, directory, True)
    ports = [_free_port() for _ in range(3)]
    instance = RspamdInstance(
        directory=directory,
        http_port=ports[0],
        controller_port=ports[1],
        milter_port=ports[2] if milter else None,
        password="txmail-test-" + os.urandom(6).hex(),
    )
    _configure(
        directory, instance.http_port, instance.controller_port, instance.milter_port, instance.password
    )
    command = [RSPAMD, "-f", "-c", RSPAMD_CONF]
    if os.geteuid() == 0:
        command.append("-i")
    for name, sub in (("LOCAL_CONFDIR", ""), ("DBDIR", "db"), ("RUNDIR", "run"), ("LOGDIR", "log")):
        command += ["--var", f"{name}={os.path.join(directory, sub).rstrip('/')}"]
    if test_case is not None:
        test_case.addCleanup(instance.stop)
    deadline = time.monotonic() + timeout
    # The controller loads its Bayes statfiles on its own: learning before
    # they are there fails ("SPAM class is missing"), so wait for /stat to
    # list both.  Seen rarely: a controller that never lists them (its
    # statfiles opened while the normal worker was creating them); rspamd
    # is then started once more, the files being there.
    for attempt in (1, 2):
        _run_until_ping(instance, command, directory, deadline, timeout)
        ready_by = deadline if attempt == 2 else min(deadline, time.monotonic() + STATFILES_WAIT)
        while not instance.statfiles_ready():
            if instance.process is None or instance.process.poll() is not None or time.monotonic() > ready_by:
                instance.stop()
                break
            time.sleep(0.1)
        else:
            if instance.milter_port is not None:
                _wait_for_listener(instance, instance.milter_port, deadline, timeout)
            return instance
    raise RuntimeError(
        f"rspamd's controller did not load its statfiles within {timeout} s:\n{instance.log()[-5000:]}"
    )


def _wait_for_listener(instance: RspamdInstance, port: int, deadline: float, timeout: float) -> None:
    """
    Wait until the milter on *port* answers an option negotiation (SMFIC_OPTNEG):
    the proxy worker starts on its own after the normal worker answers
    ``/ping``, and a connection the main process holds in its backlog
    meanwhile is not answered (a message sent then gets the milter's
    connect-time tempfail, 421).
    """
    optneg = b"O" + struct.pack(">III", 6, 0x1FF, 0x1FFFFF)
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                conn.sendall(struct.pack(">I", len(optneg)) + optneg)
                if conn.recv(5)[4:5] == b"O":
                    return
        except OSError:
            pass
        if instance.process is None or instance.process.poll() is not None or time.monotonic() > deadline:
            instance.stop()
            raise RuntimeError(
                f"rspamd's milter did not answer on {port} within {timeout} s:\n{instance.log()[-5000:]}"
            )
        time.sleep(0.1)


#: Seconds a first rspamd is given to list its statfiles before it is started again.
STATFILES_WAIT = 30.0


def _run_until_ping(
    instance: RspamdInstance, command: list[str], directory: str, deadline: float, timeout: float
) -> None:
    """Start *command* as *instance*'s process and wait until its ``/ping`` answers."""
    with open(os.path.join(directory, "log", "stdout"), "ab") as out:
        instance.process = subprocess.Popen(
            command,
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    while not instance.ping():
        if instance.process.poll() is not None or time.monotonic() > deadline:
            status = instance.process.poll()
            instance.stop()
            with open(os.path.join(directory, "log", "stdout"), encoding="utf-8", errors="replace") as f:
                output = f.read()
            raise RuntimeError(
                f"rspamd did not start (exit status {status}) within {timeout} s:\n{output[-3000:]}\n{instance.log()[-5000:]}"
            )
        time.sleep(0.1)
