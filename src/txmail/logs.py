"""
JSON logs (``[log] format = "json"``, ``--log-format json``): one flat JSON
object per line per log event, so that a log shipper (Loki, Elasticsearch,
``jq``) can follow a message from its arrival to its last delivery
attempt, as Postfix's queue id trail allows.

Every object has:

* ``time``: ISO 8601 in UTC, milliseconds (``2026-12-07T10:15:02.123Z``);
* ``level``: ``debug``, ``info``, ``warn``, ``error`` or ``critical``;
* ``system``: the logger's namespace (``txmail.smtp.server.SMTPServerProtocol``);
* ``protocol``: ``smtp``, ``pop3``, ``imap``, ``web``, ``queue``,
  ``delivery``, ``policy``... (from the namespace), when known;
* ``text``: the message, formatted;

and, where known:

* ``queue_id``: the message's id given at arrival (the SMTP server's
  ``250 ... queued as <id>``; the ``message_id`` of the log events), on
  the SMTP server's, the router's, the queue's and the queue runner's
  lines -- the key to follow a message by;
* ``queue_entry``: the id of its entry in the outbound queue (the runner
  and ``txmail queue`` name entries by it);
* ``session``: the connection's id; ``client``: the client's address
  (remembered from the connection's first line for the session's later
  lines, and for the message's deliveries);
* ``user``, ``rcpt``, ``sender``, ``reply``, ``status``... : the event's
  other fields that are plain values (strings, numbers, booleans);
* ``failure``: the traceback of an error.

Fields whose name mentions a password or secret are never written.
"""

from __future__ import annotations

import json
import sys
import time
from collections import OrderedDict
from typing import IO, Any

from twisted.logger import ILogObserver, formatEvent
from zope.interface import implementer

__all__ = ["JSONLogObserver", "json_observer_for"]

#: Log event keys turned into the output's own names.
_RENAMED = {"message_id": "queue_id", "session_id": "session", "peer": "client"}
#: Keys never copied (Twisted's own, or not for a log line).
_SKIPPED = frozenset({"format", "isError", "message", "system", "time", "why", "failure"})
#: How many sessions and messages the observer remembers the client of.
_REMEMBERED = 10_000


def _protocol(namespace: str) -> str | None:
    parts = namespace.split(".")
    if len(parts) < 2 or parts[0] != "txmail":
        return None
    part = parts[1]
    if part in ("smtp", "pop3", "imap", "web", "jmap", "policy", "milter", "sieve", "store", "pg"):
        return part
    if part == "delivery":
        return "queue" if len(parts) > 2 and parts[2] in ("queue", "runner", "spool") else "delivery"
    return None


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _iso(seconds: float) -> str:
    whole = int(seconds)
    millis = int((seconds - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


class _Remembered(OrderedDict[str, str]):
    """A bounded map (least recently set dropped first)."""

    def remember(self, key: str, value: str) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > _REMEMBERED:
            self.popitem(last=False)


@implementer(ILogObserver)
class JSONLogObserver:
    """
    Writes each log event to *out* as one line of JSON (see the module notes).

    Args:
        out: a text file (standard output by default); flushed after each line.
        fields: fields added to every object (an SMTP worker's ``worker`` number).
    """

    def __init__(self, out: IO[str] | None = None, fields: dict[str, Any] | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        self.fields = dict(fields or {})
        self._clients = _Remembered()  # session id or message id -> client address

    def to_object(self, event: dict[str, Any]) -> dict[str, Any]:
        """The flat object written for *event*."""
        namespace = str(event.get("log_namespace") or "")
        level = event.get("log_level")
        obj: dict[str, Any] = {
            "time": _iso(float(event.get("log_time") or time.time())),
            "level": getattr(level, "name", "info"),
            "system": namespace or str(event.get("log_system") or "-"),
        }
        protocol = _protocol(namespace)
        if protocol is not None:
            obj["protocol"] = protocol
        obj.update(self.fields)
        try:
            text = formatEvent(event)
        except Exception:  # formatEvent catches its own; belt and braces
            text = str(event.get("log_format"))
        obj["text"] = text
        for key, value in event.items():
            if key.startswith("log_") or key in _SKIPPED or not _plain(value):
                continue
            lowered = key.lower()
            if "password" in lowered or "secret" in lowered:
                continue
            if key == "queue_id":
                # The queue's and the runner's own entry id (the message's id is message_id).
                obj["queue_entry" if "message_id" in event else "queue_id"] = value
                continue
            obj[_RENAMED.get(key, key)] = value
        self._follow(obj)
        failure = event.get("log_failure")
        if failure is not None:
            try:
                obj["failure"] = failure.getTraceback()
            except Exception:
                obj["failure"] = repr(failure)
        return obj

    def _follow(self, obj: dict[str, Any]) -> None:
        """Fill ``client`` from what earlier lines said of the session or the message."""
        client = obj.get("client")
        session = obj.get("session")
        queue_id = obj.get("queue_id")
        if isinstance(client, str) and client:
            if isinstance(session, str):
                self._clients.remember(session, client)
            if isinstance(queue_id, str):
                self._clients.remember(queue_id, client)
            return
        for key in (session, queue_id):
            if isinstance(key, str) and key in self._clients:
                obj["client"] = self._clients[key]
                if isinstance(queue_id, str) and queue_id not in self._clients:
                    self._clients.remember(queue_id, obj["client"])
                return

    def __call__(self, event: dict[str, Any]) -> None:
        try:
            line = json.dumps(self.to_object(event), default=str, ensure_ascii=False)
        except Exception:  # never let a log line break the server
            line = json.dumps({"time": _iso(time.time()), "level": "error", "text": "unloggable event"})
        self.out.write(line + "\n")
        self.out.flush()


def json_observer_for(settings: Any) -> JSONLogObserver | None:
    """
    The JSON observer ``[log]`` asks for (``format = "json"``), writing to
    ``[log] file`` (appended; created if needed) or standard output; ``None``
    for twistd's own text lines.
    """
    if getattr(settings, "log_format", "text") != "json":
        return None
    path = getattr(settings, "log_file", None)
    if path and path != "-":
        return JSONLogObserver(open(path, "a", encoding="utf-8"))
    return JSONLogObserver()
