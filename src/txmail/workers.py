"""
SMTP on every core: receiving worker processes and one delivering owner.

One Python process runs every session on one core.  With ``[server]
workers`` (``--workers``) above 1 the server splits, as Postfix splits
``smtpd`` from its queue manager and delivery agents:

* The **owner** (the ``twistd mailserver`` process, :func:`build_service`)
  binds every listener, keeps everything that must be single -- the mail
  store (Maildir UIDs), IMAP and POP3 sessions, LMTP, the queue runner --
  and starts :class:`WorkerPool`, a service that runs the workers.
* Each **worker** (``python -m txmail.workers``, :func:`run_worker`) is
  given the owner's settings and the listening sockets of the SMTP and
  submission listeners (inherited file descriptors: privileged ports stay
  bound by the owner, which twistd may then run unprivileged), and
  accepts connections on them; the kernel hands each new connection to
  one of the processes waiting in ``accept``.  A worker runs the whole SMTP
  session -- parsing, TLS, authentication against the same users, the
  policy checks, size limits -- with the same factories as the owner would
  (:func:`txmail.service.smtp_factory`), built from the same settings.
* A worker's router (:class:`WorkerRouter`) answers RCPT TO from its own
  directory (aliases, unknown users, relaying) and asks the owner only for
  a user's storage usage when quotas are on.  At the end of DATA the
  worker parses the message (on its own core) and hands it to the owner
  over AMP (:class:`Deliver`): the path of its spool file (on the same
  file system, not yet fsynced), the envelope and the parsed metadata.
  The owner runs its :class:`~txmail.delivery.router.DeliveryRouter` on
  it exactly as a single process does -- delivery hooks, local copies
  linked into the mailboxes and fsynced, remote recipients and failed
  copies written durably into the queue -- and answers with the report;
  only then does the worker answer 250.  So ``250`` keeps its meaning:
  the message is on disk in every local recipient's mailbox or in the
  queue, and an IMAP IDLE has seen it by the time the client has its 250.
* Why not queue first, as Postfix does: a first version had each worker
  write the message durably into the queue and the owner deliver it from
  there before the answer.  It made a message cost about 3 ms more CPU
  (two more fsyncs, the queue files written, read and removed) and was
  slower with two workers than one process on a two-core machine
  (``benchmarks/README.md``, "SMTP workers"); and without waiting for the
  owner, a kill of the owner between a mailbox delivery and the queue
  update would deliver a message that got 250 twice.
* Should the owner not answer (it died), the worker answers ``451``,
  closes its listening sockets at once and exits: a message that got 250
  was delivered, once; one cut short may have been delivered, or not.
* :class:`WorkerPool` supervises: a worker that exits or dies is started
  again after ``restart_delay`` seconds (the messages it answered 250 are
  delivered or queued already; the connections it held are lost like any
  crashed connection, and their messages were not answered 250).  Stopping the server sends the workers SIGTERM (and SIGKILL
  after ``stop_timeout``); ``twistd -n mailserver`` stopped with Control-C
  stops them too (they are in its process group and stop on SIGINT).
* Logs: each worker writes its log events to its standard output as
  twistd's text lines, with ``worker N:`` (N counting from 1) at the start
  of the system part (``2026-12-07T05:30:15+0000 [worker 1:
  txmail.smtp.server.SMTPServerProtocol#info] ...``), so a connection's
  lines tell which worker served it.  The owner writes them as they are
  into its own log file (twistd's ``--logfile``, or standard output), in
  order per worker; embedded without such a file, it logs them as events.

What each worker keeps for itself: the per-client rate limits and the
failed-login delays count per worker, greylisting keeps one table per
worker (``greylist-worker-N.json``), and DNS answers are cached per
worker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import signal
import socket
import sys
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.internet.error import ProcessDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from txmail import _twisted
from txmail._fs import run_inline
from txmail.config import Settings
from txmail.interfaces import IDeliveryRouter, IStorageUsage
from txmail.mime import encode_metadata, parse_metadata
from txmail.model import DeliveryReport, Envelope, MessageSource, RecipientResult
from txmail.quota import Usage
from txmail.smtp.codes import Reply
from txmail.smtp.session import SessionRole

if TYPE_CHECKING:
    from txmail.delivery.router import DeliveryRouter

__all__ = [
    "Deliver",
    "Reload",
    "StorageUsage",
    "WorkerPool",
    "WorkerRouter",
    "envelope_from_json",
    "envelope_to_json",
    "run_worker",
]

#: The reply when the owner did not deliver a message (it died, or failed).
OWNER_FAILED_REPLY = Reply(451, "4.3.0", "Temporary failure: try again later")

#: The child's file descriptor of its AMP connection to the owner.
CONTROL_FD = 3
#: The largest value of one AMP argument (65,535 octets), with room to spare.
AMP_VALUE_LIMIT = 60_000
#: Messages up to this size are parsed by the worker for the owner (larger: by the owner's router).
PARSE_LIMIT = 256 * 1024


# -- the AMP commands ------------------------------------------------------------


class Deliver(amp.Command):
    """
    Worker to owner: deliver the message in the worker's spool file *path*
    (*size* octets, not fsynced) for the envelope (JSON, in *envelope*, or
    when larger than one AMP value in the file *envelope_file*) through
    the owner's router, as a single process would.  *metadata* is the
    message's parsed metadata (:func:`txmail.mime.encode_metadata`), empty
    when the worker did not parse it.  The report comes back as JSON, in
    *report*, or when larger than one AMP value in the file *report_file*
    (beside the spool file; the worker removes it).
    """

    arguments = [
        (b"envelope", amp.String()),
        (b"envelope_file", amp.Unicode()),
        (b"path", amp.Unicode()),
        (b"size", amp.Integer()),
        (b"metadata", amp.String()),
    ]
    response = [(b"report", amp.String()), (b"report_file", amp.Unicode())]


class Reload(amp.Command):
    """
    Owner to worker: apply *settings* (pickled :class:`~txmail.config.Settings`,
    those the owner now runs with), and read the certificate, users and
    keys again (:func:`txmail.lifecycle.apply_settings`); the worker's
    :class:`~txmail.lifecycle.ReloadReport` comes back as JSON.
    """

    arguments = [(b"settings", amp.String())]
    response = [(b"report", amp.String())]


class StorageUsage(amp.Command):
    """Worker to owner: what *user* keeps (for the quota check at RCPT TO)."""

    arguments = [(b"user", amp.Unicode())]
    response = [(b"known", amp.Boolean()), (b"octets", amp.Integer()), (b"messages", amp.Integer())]


class CollectMetrics(amp.Command):
    """
    Owner to worker: the worker's metrics (:mod:`txmail.metrics`) in the
    Prometheus text format, from octet *offset* on, at most one AMP value
    (*more*: ask again from the next offset).  Asked at each scrape of the
    owner's ``/metrics``, which adds them to its own.
    """

    arguments = [(b"offset", amp.Integer())]
    response = [(b"data", amp.String()), (b"more", amp.Boolean())]


#: Seconds a worker has to answer :class:`CollectMetrics`.
COLLECT_TIMEOUT = 5.0


# -- the owner's side ------------------------------------------------------------


@dataclass(frozen=True)
class HandedListener:
    """A listening socket handed to the workers: its role, endpoint string and descriptor."""

    role: SessionRole
    description: str
    fd: int
    family: int
    proxied: bool


class _OwnerAMP(amp.AMP):
    """The owner's end of one worker's control connection."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # amp.AMP is untyped
        self.pool = pool
        self.index = index

    @Deliver.responder
    def deliver(
        self, envelope: bytes, envelope_file: str, path: str, size: int, metadata: bytes
    ) -> defer.Deferred[dict[str, Any]]:
        from txmail.mime import decode_metadata

        if envelope_file:
            with open(envelope_file, "rb") as f:
                envelope = f.read()
        source = MessageSource.from_file(path, size)
        if metadata:
            source = source.with_metadata(decode_metadata(metadata))
        d = self.pool.router.deliver(envelope_from_json(envelope), source)

        def answer(report: DeliveryReport) -> dict[str, Any]:
            results = [
                [r.recipient, r.ok, r.temporary, _reply_to_json(r.reply), r.detail] for r in report.results
            ]
            data = json.dumps(results).encode()
            if len(data) <= AMP_VALUE_LIMIT:
                return {"report": data, "report_file": ""}
            side = f"{path}.report"
            _write(side, data)
            return {"report": b"", "report_file": side}

        return d.addCallback(answer)

    @StorageUsage.responder
    def storage_usage(self, user: str) -> defer.Deferred[dict[str, Any]]:
        def answer(usage: Usage | None) -> dict[str, Any]:
            if usage is None:
                return {"known": False, "octets": 0, "messages": 0}
            return {"known": True, "octets": usage.octets, "messages": usage.messages}

        asked: defer.Deferred[dict[str, Any]] = self.pool.router._usage(user).addCallback(answer)
        return asked


class _WorkerProcess(protocol.ProcessProtocol):
    """One worker process seen from the owner: its output becomes log lines."""

    log = Logger()

    def __init__(self, pool: WorkerPool, index: int, spec: bytes) -> None:
        self.pool = pool
        self.index = index
        self.spec = spec
        self.started = 0.0
        self._partial = {1: b"", 2: b""}
        self.ended: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.spec)
        self.transport.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:  # noqa: N803 -- Twisted's name
        if childFD not in self._partial:
            return
        lines = (self._partial[childFD] + data).split(b"\n")
        self._partial[childFD] = lines.pop()
        self._lines(lines)

    def _lines(self, lines: list[bytes]) -> None:
        text = "".join(
            t + "\n" for t in (line.decode("utf-8", "replace").rstrip("\r") for line in lines) if t
        )
        if not text:
            return
        out = self.pool.log_output
        if out is not None:
            # Already log lines: straight into the owner's log file (twistd's).
            try:
                out(text)
                return
            except Exception:
                self.pool.log_output = None
                self.log.failure("writing the workers' log lines failed; logging them as events")
        # No log file of ours to write into (an embedder's observers): one
        # event for what arrived at once.
        self.log.info("{lines}", lines=text.rstrip("\n"), worker=self.index)

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in self._partial.items():
            if rest:
                self._lines([rest])
            self._partial[fd] = b""
        self.pool._ended(self, reason)
        self.ended.callback(None)


class WorkerPool(_twisted.Service):
    """
    Runs *count* SMTP worker processes on the listeners of *listeners* whose
    ``accept`` is false, and answers them (see the module notes).

    Args:
        reactor: the owner's reactor.
        settings: the settings the workers are given (``workers`` included).
        count: how many workers.
        listeners: the server's :class:`txmail.service.ListenerService` objects.
        router: the owner's :class:`~txmail.delivery.router.DeliveryRouter`:
            it delivers what the workers receive, and tells storage usage.
        python: the interpreter the workers run on.
        restart_delay: seconds before a worker that ended is started again.
        stop_timeout: seconds the workers get to stop before SIGKILL.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        settings: Settings,
        count: int,
        listeners: Sequence[Any],
        router: DeliveryRouter,
        *,
        python: str = sys.executable,
        restart_delay: float = 1.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.reactor = reactor
        self.settings = settings
        self.count = count
        self.listeners = [lst for lst in listeners if not lst.accept]
        self.router = router
        self.python = python
        self.restart_delay = restart_delay
        self.stop_timeout = stop_timeout
        #: index (from 1) -> the running process, for each live worker.
        self.processes: dict[int, _WorkerProcess] = {}
        self._controls: dict[int, Any] = {}
        self._restarts: dict[int, Any] = {}
        self._delays: dict[int, float] = {}  # index -> the last restart delay
        #: Writes the workers' log lines into the process's log file, or
        #: ``None``: they become log events (see :func:`_log_output`).
        self.log_output: Callable[[str], None] | None = None
        #: index -> the worker's metrics at the last collection.
        self._last_metrics: dict[int, bytes] = {}
        #: The counts of the workers that ended (their last collection), added up.
        self._retired_metrics = b""

    def collect_metrics(self) -> defer.Deferred[list[bytes]]:
        """
        Each running worker's metrics (:class:`CollectMetrics`), and the
        counts the workers that ended left (so that a restart does not
        make the server's counters go back).  A worker that does not
        answer in :data:`COLLECT_TIMEOUT` seconds gives its last ones.
        """

        async def one(index: int, control: Any) -> None:
            chunks: list[bytes] = []
            offset, more = 0, True
            while more:
                d = control.callRemote(CollectMetrics, offset=offset)
                d.addTimeout(COLLECT_TIMEOUT, self.reactor)
                answer = await d
                chunks.append(answer["data"])
                offset += len(answer["data"])
                more = bool(answer["more"]) and bool(answer["data"])
            self._last_metrics[index] = b"".join(chunks)

        def failed(f: Failure, index: int) -> None:
            self.log.info("worker {worker} gave no metrics: {error}", worker=index, error=f.getErrorMessage())

        steps = [
            defer.Deferred.fromCoroutine(one(index, control)).addErrback(failed, index)
            for index, control in list(self._controls.items())
            if index in self.processes
        ]

        def gathered(_: Any) -> list[bytes]:
            texts = [self._last_metrics[i] for i in sorted(self._last_metrics) if i in self.processes]
            return [self._retired_metrics, *texts] if self._retired_metrics else texts

        return defer.gatherResults(steps).addCallback(gathered)

    def _retire_metrics(self, index: int) -> None:
        """Worker *index* ended: keep its counts (not its gauges) among the retired ones."""
        last = self._last_metrics.pop(index, None)
        if not last:
            return
        from txmail.metrics import merge_expositions

        texts = [self._retired_metrics, last] if self._retired_metrics else [last]
        try:
            self._retired_metrics = merge_expositions(texts, keep_gauges=False)
        except Exception:
            self.log.failure("keeping the counts of worker {worker} failed", worker=index)

    def handed(self) -> list[HandedListener]:
        """The listening sockets the workers get."""
        out = []
        for lst in self.listeners:
            port = lst.port
            if port is None:
                raise RuntimeError(f"{lst.role} listener on {lst.description} is not listening")
            out.append(
                HandedListener(
                    lst.role, lst.description, port.fileno(), port.socket.family, lst.proxy is not None
                )
            )
        return out

    def startService(self) -> None:
        super().startService()
        self.log_output = _log_output()
        for index in range(1, self.count + 1):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        if not self.running:
            return
        handed = self.handed()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r", CONTROL_FD: theirs.fileno()}
        fds = []
        for n, lst in enumerate(handed):
            child_fds[CONTROL_FD + 1 + n] = lst.fd
            fds.append((lst.role, lst.description, CONTROL_FD + 1 + n, lst.family, lst.proxied))
        spec = pickle.dumps({"settings": self.settings, "index": index, "listeners": fds})
        env = dict(os.environ)
        # The workers import this very txmail, wherever the owner found it.
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
        process = _WorkerProcess(self, index, spec)
        try:
            transport = self.reactor.spawnProcess(
                process,
                self.python,
                [self.python, "-m", "txmail.workers", str(index)],
                env=env,
                childFDs=child_fds,
            )
        finally:
            theirs.close()
        control = _OwnerAMP(self, index)
        self.reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, _Once(control))
        ours.close()
        self._controls[index] = control
        self.processes[index] = process
        process.started = self.reactor.seconds()
        self.log.info("worker {worker} started (pid {pid})", worker=index, pid=transport.pid)

    def _ended(self, process: _WorkerProcess, reason: Failure) -> None:
        index = process.index
        if self.processes.get(index) is process:
            del self.processes[index]
        control = self._controls.pop(index, None)
        if control is not None and control.transport is not None:
            control.transport.loseConnection()
        self._retire_metrics(index)
        if not self.running:
            return
        # A worker stopped by Control-C (the signal reaches the whole process
        # group) may end before this process hears of it: the restart waits,
        # and stopping the server cancels it.
        delay = self._delays[index] = next_delay(
            self._delays.get(index, 0.0), self.reactor.seconds() - process.started, self.restart_delay
        )
        self.log.warn(
            "worker {worker} ended ({reason}); it is started again in {delay} s unless the server stops",
            worker=index,
            reason=reason.getErrorMessage() if not reason.check(ProcessDone) else "exit 0",
            delay=delay,
        )
        self._restarts[index] = self.reactor.callLater(delay, self._spawn, index)

    def reload(self, settings: Settings) -> defer.Deferred[list[Any]]:
        """
        Send *settings* to every running worker (:class:`Reload`); a Deferred
        of their :class:`~txmail.lifecycle.ReloadReport` list.  A worker
        started later is given them at its start.
        """
        from txmail.lifecycle import ReloadReport

        self.settings = settings
        data = pickle.dumps(settings)
        if len(data) > AMP_VALUE_LIMIT:
            error = "the settings are too large to send to the SMTP workers; restart to apply them there"
            self.log.error("reload: {error}", error=error)
            return defer.succeed([ReloadReport(errors=(error,))])

        def one(index: int, control: Any) -> defer.Deferred[Any]:
            d = control.callRemote(Reload, settings=data)
            d.addCallback(lambda answer: ReloadReport.from_dict(json.loads(answer["report"])))

            def failed(f: Failure) -> Any:
                self.log.failure("reload: worker {worker} did not reload", f, worker=index)
                return ReloadReport(errors=(f"worker {index}: {f.getErrorMessage()}",))

            reloaded: defer.Deferred[Any] = d.addErrback(failed)
            return reloaded

        return defer.gatherResults([one(i, c) for i, c in sorted(self._controls.items())])

    def force(self) -> None:
        """Make the workers stop now, cutting their open sessions (``SIGQUIT``; a forced stop)."""
        for process in list(self.processes.values()):
            if not process.ended.called:
                _signal(process, signal.SIGQUIT)  # signalProcess knows only KILL, TERM and INT by name

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        processes = list(self.processes.values())
        for process in processes:
            _signal(process, "TERM")

        def kill() -> None:
            for process in processes:
                if not process.ended.called:
                    self.log.warn("worker {worker} did not stop: killing it", worker=process.index)
                    _signal(process, "KILL")

        timer = self.reactor.callLater(self.stop_timeout, kill)
        done = defer.gatherResults([p.ended for p in processes])

        def stopped(_: Any) -> None:
            if timer.active():
                timer.cancel()

        return done.addCallback(stopped)


#: A worker that lived less than this (seconds) died young: its next restart waits twice as long.
YOUNG = 10.0
#: The longest wait before a worker that keeps dying young is started again (seconds).
MAX_RESTART_DELAY = 60.0


def next_delay(last: float, lived: float, first: float) -> float:
    """
    The wait before a worker that ended after *lived* seconds is started
    again: *first* after a worker that ran a while; twice the *last* wait
    (at most :data:`MAX_RESTART_DELAY`) after one that died young (a worker
    that cannot start, say, is not restarted in a tight loop).
    """
    if lived >= YOUNG or last <= 0:
        return first
    return min(max(last * 2, first), MAX_RESTART_DELAY)


def _log_output() -> Callable[[str], None] | None:
    """
    A writer into the text log file of this process (twistd's ``--logfile``,
    or its standard output with ``-n``): the one file observer of the
    global log publisher, or ``None`` when there is not exactly one.  The
    workers' lines are written through it as they are, so that relaying
    them costs the owner one write a batch, not a log event a line; the
    file's own rotation applies to them too.
    """
    from twisted.logger import globalLogPublisher

    from txmail.logs import JSONLogObserver

    every = list(getattr(globalLogPublisher, "_observers", ()))
    json_observers = [o for o in every if isinstance(o, JSONLogObserver)]
    if len(json_observers) == 1:
        # [log] format = "json": the workers write JSON lines too (main).
        json_out = json_observers[0].out

        def write_json(text: str) -> None:
            json_out.write(text)
            json_out.flush()

        return write_json
    observers = [o for o in every if hasattr(o, "_outFile")]
    if len(observers) != 1:
        return None
    observer = observers[0]
    out, encoding = observer._outFile, getattr(observer, "_encoding", None)

    def write(text: str) -> None:
        out.write(text if encoding is None else text.encode(encoding))
        out.flush()

    return write


def _signal(process: _WorkerProcess, name: str | int) -> None:
    transport = process.transport
    if transport is None or getattr(transport, "pid", None) is None:
        return
    try:
        transport.signalProcess(name)
    except (OSError, ProcessLookupError) as e:  # gone meanwhile
        process.log.debug("signalling worker {worker}: {error}", worker=process.index, error=e)
    except Exception as e:  # twisted.internet.error.ProcessExitedAlready
        process.log.debug("signalling worker {worker}: {error}", worker=process.index, error=e)


class _Once(protocol.Factory):
    """A factory for one adopted connection: it hands out *proto*."""

    def __init__(self, proto: protocol.Protocol) -> None:
        self.proto = proto

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        return self.proto


# -- the worker's side -------------------------------------------------------------

_log = Logger(namespace="txmail.workers")


class _WorkerAMP(amp.AMP):
    """The worker's end of its control connection; losing it stops the worker."""

    def __init__(self, lost: Callable[[], None]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # amp.AMP is untyped
        self._lost = lost
        #: The worker's :class:`txmail.metrics.Metrics`, or ``None`` without ``[metrics]``.
        self.metrics: Any = None
        self._exposition = b""

    @CollectMetrics.responder
    def collect_metrics(self, offset: int) -> dict[str, Any]:
        if offset == 0:
            self._exposition = self.metrics.exposition()[0] if self.metrics is not None else b""
        data = self._exposition[offset : offset + AMP_VALUE_LIMIT]
        return {"data": data, "more": offset + len(data) < len(self._exposition)}
        #: The worker's service, once built (what :class:`Reload` applies to).
        self.target: Any = None

    @Reload.responder
    def reload(self, settings: bytes) -> dict[str, Any]:
        from txmail.lifecycle import ReloadReport, apply_settings

        try:
            report = apply_settings(self.target, pickle.loads(settings))
        except Exception as e:
            _log.failure("reload failed; the running configuration is kept")
            report = ReloadReport(errors=(str(e),))
        return {"report": json.dumps(report.to_dict()).encode()}

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        super().connectionLost(reason)  # type: ignore[no-untyped-call]  # amp.AMP is untyped
        self._lost()


@implementer(IStorageUsage)
class _OwnerUsage:
    """One user's storage usage, asked of the owner."""

    def __init__(self, control: amp.AMP, user: str) -> None:
        self.control = control
        self.user = user

    def usage(self) -> defer.Deferred[Usage | None]:  # type: ignore[override]  # None: the owner's store keeps no usage (the router reads it as unknown)
        def made(answer: dict[str, Any]) -> Usage | None:
            if not answer["known"]:
                return None
            return Usage(octets=answer["octets"], messages=answer["messages"])

        asked: defer.Deferred[Usage | None] = self.control.callRemote(
            StorageUsage, user=self.user
        ).addCallback(made)
        return asked


class _OwnerStores:
    """What a worker's recipient check sees as the stores: usage, asked of the owner."""

    def __init__(self, control: amp.AMP) -> None:
        self.control = control

    def store_for(self, user: str) -> defer.Deferred[_OwnerUsage]:
        return defer.succeed(_OwnerUsage(self.control, user))


@implementer(IDeliveryRouter)
class WorkerRouter:
    """
    A worker's router: recipients are checked by *checker* (a
    :class:`~txmail.delivery.router.DeliveryRouter` on the worker's
    directory, whose stores give usage asked of the owner); a message is
    parsed here and handed to the owner with *hand_over* (``(envelope
    JSON, envelope file or "", path, size, metadata) -> Deferred`` of the
    answer), whose report it gives.  See the module notes.

    Args:
        spool_dir: where an envelope too large for one AMP value is written
            for the owner.
        run_blocking: reads spooled messages too large to be in memory.
    """

    log = Logger()

    def __init__(
        self,
        checker: DeliveryRouter,
        hand_over: Callable[..., defer.Deferred[Any]],
        spool_dir: str,
        run_blocking: Callable[..., defer.Deferred[Any]] | None = None,
    ) -> None:
        self.checker = checker
        self.hand_over = hand_over
        self.spool_dir = spool_dir
        self._run = run_blocking or run_inline
        self.directory = checker.directory

    def check_recipient(
        self, address: str, authenticated_user: str | None = None
    ) -> defer.Deferred[RecipientResult]:
        """See :meth:`txmail.interfaces.IDeliveryRouter.check_recipient`."""
        return self.checker.check_recipient(address, authenticated_user)

    @defer.inlineCallbacks
    def deliver(self, envelope: Envelope, message: MessageSource) -> Generator[Any, Any, DeliveryReport]:
        """Hand the spooled message to the owner; its report, or 451 for every recipient."""
        if message.local_path is None:
            raise ValueError("a worker hands over spooled messages only")
        # The owner would parse the message to deliver it: it is parsed here, on the worker's core.
        metadata = b""
        if message.size <= PARSE_LIMIT:
            try:
                data = message.data if message.data is not None else (yield self._run(_read, message))
                metadata = encode_metadata(parse_metadata(data))
            except Exception:
                self.log.failure("parsing {message_id} failed", message_id=envelope.message_id)
            if len(metadata) > AMP_VALUE_LIMIT:
                metadata = b""
        env = envelope_to_json(envelope)
        side = ""
        try:
            if len(env) > AMP_VALUE_LIMIT:
                side = os.path.join(self.spool_dir, f"{envelope.message_id}.envelope")
                yield self._run(_write, side, env)
                env = b""
            answer = yield self.hand_over(env, side, message.local_path, message.size, metadata)
        except Exception:
            self.log.failure("the owner did not deliver {message_id}", message_id=envelope.message_id)
            return _report(envelope, ok=False, reply=OWNER_FAILED_REPLY)
        finally:
            if side:
                with contextlib.suppress(OSError):
                    os.unlink(side)
        report = answer["report"]
        if answer["report_file"]:
            report = yield self._run(_take, answer["report_file"])
        return DeliveryReport(
            tuple(
                RecipientResult(
                    rcpt, ok=bool(ok), temporary=bool(temporary), reply=_reply_from_json(reply), detail=detail
                )
                for rcpt, ok, temporary, reply, detail in json.loads(report)
            )
        )


def envelope_to_json(envelope: Envelope) -> bytes:
    """*envelope* as JSON (what crosses from a worker to the owner)."""
    return json.dumps(dataclasses.asdict(envelope)).encode()


def envelope_from_json(data: bytes) -> Envelope:
    """The inverse of :func:`envelope_to_json`."""
    env = json.loads(data)
    env["rcpt_to"] = tuple(env["rcpt_to"])
    env["rcpt_params"] = tuple(env["rcpt_params"])
    return Envelope(**env)


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _take(path: str) -> bytes:
    """Read a file handed over, and remove it."""
    try:
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


def _read(message: MessageSource) -> bytes:
    with message.open() as f:
        return f.read()


def _reply_to_json(reply: Reply | None) -> list[Any] | None:
    """A result's reply as it crosses from the owner to a worker: ``[code, enhanced, text]``."""
    return None if reply is None else [reply.code, reply.enhanced, reply.text]


def _reply_from_json(value: list[Any] | None) -> Reply | None:
    """The inverse of :func:`_reply_to_json`."""
    return None if value is None else Reply(int(value[0]), str(value[1]), str(value[2]))


def _report(envelope: Envelope, *, ok: bool, reply: Reply, detail: str = "") -> DeliveryReport:
    return DeliveryReport(
        tuple(
            RecipientResult(rcpt, ok=ok, temporary=not ok, reply=reply, detail=detail)
            for rcpt in envelope.rcpt_to
        )
    )


class _AdoptingReactor:
    """
    The reactor a worker's endpoints listen through: ``listenTCP`` and
    ``listenSSL`` adopt the inherited socket *fd* instead of binding (TLS
    wrapped around the factory as ``listenSSL`` would); every other
    attribute is the real reactor's.
    """

    def __init__(self, reactor: Any, fd: int, family: int) -> None:
        self._reactor = reactor
        self._fd = fd
        self._family = family

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        return self._reactor.adoptStreamPort(self._fd, self._family, factory)

    def listenSSL(
        self,
        port: int,
        factory: Any,
        contextFactory: Any,  # noqa: N803 -- IReactorSSL's name
        backlog: int = 50,
        interface: str = "",
    ) -> Any:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        return self.listenTCP(port, TLSMemoryBIOFactory(contextFactory, False, factory), backlog, interface)

    def listenUNIX(self, address: str, factory: Any, *args: Any, **kwargs: Any) -> Any:
        return self._reactor.adoptStreamPort(self._fd, self._family, factory)


def run_worker(reactor: Any, spec: dict[str, Any]) -> service.MultiService:
    """
    Build and start a worker from its *spec* (settings, index, inherited
    listeners): the SMTP side of :func:`txmail.service.build_service` on
    the inherited sockets, with a :class:`WorkerRouter`.  Returns the
    running service; the reactor stops when the owner goes away.
    """
    from txmail.auth.authenticator import Authenticator
    from txmail.config import parse_host_port
    from txmail.delivery.spool import clean_spool
    from txmail.lifecycle import key_files_digest, stop_gracefully
    from txmail.policy.builtin import signing_keys
    from txmail.proxywrap import ProxySettings
    from txmail.resolver import Resolver
    from txmail.service import (
        ListenerService,
        ThreadPoolService,
        make_directory,
        make_router,
        smtp_factory,
        smtp_policies,
        tune_gc,
    )
    from txmail.tls import ReloadableServerTLS, with_certificate

    settings: Settings = spec["settings"]
    index: int = spec["index"]
    tune_gc(settings.gc_threshold)
    server = service.MultiService()
    pool = ThreadPoolService(reactor, settings.threads)
    pool.setServiceParent(server)
    run_blocking = pool.run_blocking
    spool_dir = settings.path("spool", f"worker-{index}")
    os.makedirs(spool_dir, exist_ok=True)
    clean_spool(spool_dir)

    def lost() -> None:
        # The owner is gone: free the ports at once (a new owner binds them), then stop.
        for child in list(server):
            if isinstance(child, ListenerService) and child.running:
                child.stopService()
        if reactor.running:
            reactor.stop()

    control = _WorkerAMP(lost)
    reactor.adoptStreamConnection(CONTROL_FD, socket.AF_UNIX, _Once(control))
    os.close(CONTROL_FD)

    directory = make_directory(settings, server, reactor=reactor)
    keys = signing_keys(settings.policy)
    checker = make_router(
        settings,
        directory,
        _OwnerStores(control),  # type: ignore[arg-type]  # a partial store provider: only the usage a recipient check reads
        None,  # type: ignore[arg-type]  # a recipient check queues nothing
        reactor=reactor,
        run_blocking=run_blocking,
        keys=keys,
    )

    def hand_over(
        envelope: bytes, envelope_file: str, path: str, size: int, metadata: bytes
    ) -> defer.Deferred[Any]:
        return control.callRemote(  # type: ignore[no-any-return,no-untyped-call]  # amp is untyped
            Deliver, envelope=envelope, envelope_file=envelope_file, path=path, size=size, metadata=metadata
        )

    router = WorkerRouter(checker, hand_over, spool_dir, run_blocking)
    authenticator = Authenticator(directory, clock=reactor, run_blocking=run_blocking)
    tls = (
        ReloadableServerTLS(settings.tls_cert, settings.tls_key)
        if settings.tls_cert and settings.tls_key
        else None
    )
    nameservers = [parse_host_port(r, 53) for r in settings.resolvers] or None
    dns = Resolver(nameservers, reactor=reactor)
    greylist_path = settings.path(f"greylist-worker-{index}.json")
    policies, _ = smtp_policies(
        settings,
        server,
        reactor=reactor,
        run_blocking=run_blocking,
        dns=dns,
        keys=keys,
        greylist_path=greylist_path,
    )
    proxy = ProxySettings.from_strings(settings.proxy_trusted, settings.proxy_timeout)
    if settings.metrics_listen or settings.metrics_on_web:
        from txmail.metrics import Metrics

        # Counted here, collected by the owner at each scrape (CollectMetrics).
        control.metrics = Metrics()
    listeners = []
    for role, description, fd, family, proxied in spec["listeners"]:
        factory = smtp_factory(
            settings,
            role,
            description,
            router=router,
            authenticator=authenticator,
            directory=directory,
            spool_dir=spool_dir,
            tls=tls,
            policies=policies,
            dns=dns,
            reactor=reactor,
            run_blocking=run_blocking,
        )
        if control.metrics is not None:
            from txmail.metrics import bind_listener

            bind_listener(control.metrics, factory, role)
        listener = ListenerService(
            _AdoptingReactor(reactor, fd, family),
            with_certificate(description, settings.tls_cert, settings.tls_key),
            factory,
            role,
            proxy=proxy if proxied else None,
            tls=tls if "privateKey=" not in description else None,
        )
        listener.setServiceParent(server)
        listeners.append(listener)
    # What a reload (Reload, from the owner) and the graceful stop work on.
    target: Any = server
    target.settings = settings
    target.reactor = reactor
    target.tls = tls
    target.directory = directory
    target.listeners = listeners
    target.routers = [checker]
    target.run_blocking = run_blocking
    target.dns = dns
    target.greylist_path = greylist_path
    target.key_digest = key_files_digest(settings)
    control.target = server
    server.startService()
    # The adopted ports hold their own copies of the descriptors.
    for _, _, fd, _, _ in spec["listeners"]:
        os.close(fd)
    # SIGTERM from the owner, or Control-C: the open sessions finish first.
    reactor.addSystemEventTrigger("before", "shutdown", lambda: stop_gracefully(server))
    return server


def _force(reactor: Any, server: Any) -> None:
    """Stop now: the open sessions are cut (a forced stop of the owner)."""
    server.force_requested = True
    force_stop = getattr(server, "force_stop", None)
    if force_stop is not None:
        force_stop()
    elif reactor.running:
        reactor.stop()


def main() -> None:
    """``python -m txmail.workers N``: a worker, given its spec on standard input by the owner."""
    from twisted.internet import reactor
    from twisted.logger import FileLogObserver, formatEventAsClassicLogText, globalLogBeginner

    spec = pickle.loads(sys.stdin.buffer.read())
    marker = f" [worker {spec['index']}: "

    def text(event: Any) -> str:
        # twistd's line, the worker named in its system part:
        # "2026-12-07T05:30:15+0000 [worker 1: txmail.smtp.server.SMTPServerProtocol#info] ..."
        line = formatEventAsClassicLogText(event) or ""
        stamp, found, rest = line.partition(" [")
        return stamp + marker + rest if found else line

    if getattr(spec["settings"], "log_format", "text") == "json":
        from txmail.logs import JSONLogObserver

        # The owner copies these lines into its JSON log (_log_output).
        observer: Any = JSONLogObserver(sys.stdout, fields={"worker": spec["index"]})
    else:
        observer = FileLogObserver(sys.stdout, text)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    # SIGINT (Control-C on twistd -n reaches the whole process group) and SIGTERM stop it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    server = run_worker(reactor, spec)

    def force(signum: int, frame: Any) -> None:
        # SIGQUIT from the owner (WorkerPool.force): cut the graceful stop short.
        reactor.callFromThread(_force, reactor, server)  # type: ignore[attr-defined]  # the global reactor is a full IReactorThreads

    signal.signal(signal.SIGQUIT, force)

    def stopping() -> None:
        # A Control-C reaches the worker twice (the group's SIGINT, then the
        # owner's SIGTERM): once stopping, more of them change nothing; the
        # owner's SIGQUIT (a second Control-C there) cuts the stop short.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: None)

    reactor.addSystemEventTrigger("before", "shutdown", stopping)
    reactor.run()


if __name__ == "__main__":
    main()
