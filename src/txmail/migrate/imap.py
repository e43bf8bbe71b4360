"""
Import a user's mail from another IMAP server, resumably, as imapsync does.

The client is the standard library's :mod:`imaplib` (IMAP4rev1, RFC 3501):
LOGIN over implicit TLS (port 993), STARTTLS (RFC 2595) or, when asked,
plain text; certificates are checked unless ``insecure`` is asked for.  The
source is only read: folders are opened with EXAMINE and messages fetched
with ``BODY.PEEK[]``, so nothing is changed there, not even ``\\Seen``.

Folders come from ``LIST "" "*"`` (with ``RETURN (SPECIAL-USE)`` when the
server has SPECIAL-USE and LIST-EXTENDED, RFC 6154 and RFC 5258, so that
roles are kept), their names decoded from modified UTF-7 with the server's
delimiter turned into ``/`` and the personal namespace's prefix
(``INBOX.`` on Courier-style servers, RFC 2342) taken off; folders of other
namespaces (shared, other users) are left alone.  Each message keeps its
FLAGS (``\\Recent`` aside; keywords that are not atoms are dropped) and
INTERNALDATE.  Messages come over in partial FETCHes of
:data:`FETCH_CHUNK` octets (RFC 3501 section 6.4.5, ``BODY.PEEK[]<offset.length>``)
into a spool (:class:`txmail.migrate._store.Spool`), so a large one is
never whole in memory.

Resuming: a state file (JSON, under ``<data-dir>/migrate/<user>/``, one per
source login and server) records for each source folder its UIDVALIDITY
and the highest UID copied, written after each message is stored.  A run
copies only the UIDs above it, so running again copies what is new, and a
run that was interrupted (or stopped by ``max_messages``) goes on where it
stopped (a run killed between storing a message and recording it finds
that message as the destination folder's last, and does not store it
again).  When a folder's UIDVALIDITY changed, or the state knows nothing
of a folder whose destination already holds mail, the folder is copied
again from its start, each message skipped when the destination folder
already has one with the same Message-ID, size and internal date.
"""

from __future__ import annotations

import ast
import contextlib
import imaplib
import json
import os
import re
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from txmail.errors import InvalidMailboxName
from txmail.interfaces import IMailStore
from txmail.migrate._formats import (
    decode_mutf7,
    join_imaplib,
    pairs,
    parse_imap,
    parse_internaldate,
    safe_flags,
)
from txmail.migrate._store import MEMORY_LIMIT, MigrationError, Spool, Summary, Target, wait
from txmail.model import DELIMITER, INBOX, SpecialUse, normalize_mailbox_name
from txmail.store._crlf import bare_lf_count, to_crlf

__all__ = [
    "IMAPSource",
    "ImportState",
    "RemoteFolder",
    "connect",
    "import_imap",
    "list_folders",
    "state_path",
]

_ROLES = {role.value.lower(): role for role in SpecialUse}


@dataclass(frozen=True)
class IMAPSource:
    """
    Where to import from.

    Attributes:
        host, port: the server.
        login, password: the account there.
        security: ``"tls"`` (implicit TLS), ``"starttls"`` or ``"none"``.
        insecure: do not check the server's certificate.
        cafile: the certificates to trust instead of the system's.
        timeout: seconds to wait for the server, per operation.
    """

    host: str
    port: int
    login: str
    password: str
    security: str = "starttls"
    insecure: bool = False
    cafile: str | None = None
    timeout: float = 60.0

    @property
    def key(self) -> str:
        """The name of this source's state file."""
        text = f"{self.login}@{self.host}:{self.port}"
        return re.sub(r"[^A-Za-z0-9@._+:-]", lambda m: f"%{ord(m.group()):02X}", text) + ".json"


def state_path(data_dir: str, user: str, source: IMAPSource) -> str:
    """The state file of importing *source* into *user*'s store."""
    safe_user = re.sub(r"[^A-Za-z0-9@._+-]", "_", user)
    return os.path.join(data_dir, "migrate", safe_user, source.key)


class ImportState:
    """The resume state: per source folder (by its name on the server), its UIDVALIDITY and last UID copied."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.folders: dict[str, dict[str, int]] = {}
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            raise MigrationError(f"cannot read the state file {path}: {e}") from None
        try:
            for name, entry in (data.get("folders") or {}).items():
                self.folders[str(name)] = {
                    "uidvalidity": int(entry["uidvalidity"]),
                    "last_uid": int(entry["last_uid"]),
                }
        except (AttributeError, KeyError, TypeError, ValueError):
            raise MigrationError(
                f"the state file {path} is damaged: remove it to copy again (messages already here are skipped)"
            ) from None

    def get(self, folder: str) -> tuple[int, int] | None:
        entry = self.folders.get(folder)
        return None if entry is None else (entry["uidvalidity"], entry["last_uid"])

    def set(self, folder: str, uidvalidity: int, last_uid: int) -> None:
        self.folders[folder] = {"uidvalidity": uidvalidity, "last_uid": last_uid}
        self.save()

    def save(self) -> None:
        """Write the state (a temporary file renamed over the old one: never half written)."""
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"version": 1, "folders": self.folders}, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


# -- the connection -----------------------------------------------------------


def _context(source: IMAPSource) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=source.cafile)
    if source.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def connect(source: IMAPSource) -> imaplib.IMAP4:
    """
    Connect and log in.

    Raises:
        MigrationError: the server cannot be reached, TLS fails, or the login is refused.
    """
    where = f"{source.host}:{source.port}"
    try:
        if source.security == "tls":
            conn: imaplib.IMAP4 = imaplib.IMAP4_SSL(
                source.host, source.port, ssl_context=_context(source), timeout=source.timeout
            )
        else:
            conn = imaplib.IMAP4(source.host, source.port, timeout=source.timeout)
            if source.security == "starttls":
                conn.starttls(_context(source))
    except ssl.SSLCertVerificationError as e:
        raise MigrationError(
            f"the certificate of {where} is not trusted ({e.verify_message}): "
            "--cafile names the CA to trust, --insecure skips the check"
        ) from None
    except (OSError, imaplib.IMAP4.error) as e:
        raise MigrationError(f"cannot connect to {where}: {_text(e)}") from None
    try:
        _login(conn, source)
    except (imaplib.IMAP4.error, OSError) as e:
        _logout(conn)
        raise MigrationError(f"login as {source.login} refused by {where}: {_text(e)}") from None
    # Servers list more capabilities once logged in (Dovecot: NAMESPACE,
    # SPECIAL-USE, LIST-EXTENDED); imaplib keeps the greeting's.
    with contextlib.suppress(imaplib.IMAP4.error, OSError):
        typ, data = conn.capability()
        if typ == "OK" and data and isinstance(data[-1], bytes):
            conn.capabilities = tuple(data[-1].decode("ascii", "replace").upper().split())
    return conn


def _login(conn: imaplib.IMAP4, source: IMAPSource) -> None:
    """
    LOGIN (RFC 3501 section 6.2.3), or AUTHENTICATE PLAIN (RFC 4616, UTF-8)
    for a name or password that is not ASCII, which LOGIN cannot carry.
    """
    if (source.login + source.password).isascii():
        conn.login(source.login, source.password)
        return
    if "AUTH=PLAIN" not in conn.capabilities:
        raise imaplib.IMAP4.error(
            "a name or password that is not ASCII needs AUTHENTICATE PLAIN, not offered"
        )
    response = b"\0" + source.login.encode("utf-8") + b"\0" + source.password.encode("utf-8")
    conn.authenticate("PLAIN", lambda _: response)


def _text(error: BaseException) -> str:
    text = str(error)
    if text.startswith("b'") or text.startswith('b"'):
        with contextlib.suppress(Exception):
            text = ast.literal_eval(text).decode("utf-8", "replace")  # imaplib's repr of a bytes reply
    return text or error.__class__.__name__


def _logout(conn: imaplib.IMAP4) -> None:
    with contextlib.suppress(Exception):
        conn.logout()


def _quote(name: bytes) -> bytes:
    return b'"' + name.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _ok(typ: str, data: Any, what: str) -> Any:
    if typ != "OK":
        detail = b" ".join(d for d in data if isinstance(d, bytes)).decode("utf-8", "replace")
        raise MigrationError(f"{what} failed: {detail}")
    return data


@dataclass(frozen=True)
class RemoteFolder:
    """One folder of the source: its name on the server (octets) and here, and its role."""

    raw: bytes
    name: str
    role: SpecialUse | None


def _namespaces(conn: imaplib.IMAP4) -> tuple[bytes, list[bytes]]:
    """The personal namespace's prefix and the other namespaces' prefixes (RFC 2342)."""
    if "NAMESPACE" not in conn.capabilities:
        return b"", []
    typ, data = conn.namespace()
    if typ != "OK" or not data:
        return b"", []
    try:
        groups = parse_imap(b"".join(join_imaplib(data)))
    except ValueError:
        return b"", []
    prefixes: list[list[bytes]] = []
    for group in groups[:3]:
        found = []
        if isinstance(group, list):
            for ns in group:
                if isinstance(ns, list) and ns and isinstance(ns[0], bytes):
                    found.append(ns[0])
        prefixes.append(found)
    personal = prefixes[0][0] if prefixes and prefixes[0] else b""
    others = [p for group in prefixes[1:] for p in group if p]
    return personal, others


def list_folders(conn: imaplib.IMAP4, summary: Summary) -> list[RemoteFolder]:
    """Every selectable folder of the source's personal namespace."""
    personal, others = _namespaces(conn)
    caps = conn.capabilities
    if "SPECIAL-USE" in caps and "LIST-EXTENDED" in caps:
        typ, data = conn._simple_command("LIST", '""', '"*"', "RETURN", "(SPECIAL-USE)")
        typ, data = conn._untagged_response(typ, data, "LIST")
    else:
        typ, data = conn.list('""', '"*"')
    _ok(typ, data, "LIST")
    folders: dict[str, RemoteFolder] = {}
    for response in join_imaplib(data):
        try:
            items = parse_imap(response)
            attributes, delimiter, raw = items[0], items[1], items[2]
        except (ValueError, IndexError):
            summary.problems.append(f"a LIST response was not understood: {response[:200]!r}")
            continue
        if not isinstance(attributes, list) or not isinstance(raw, bytes):
            continue
        flags = {a.decode("latin-1").lower() for a in attributes if isinstance(a, bytes)}
        if flags & {"\\noselect", "\\nonexistent"}:
            continue
        if any(raw.startswith(p) for p in others):
            continue
        name = _local_name(raw, delimiter if isinstance(delimiter, bytes) else None, personal)
        if name is None:
            summary.skip(f"folder {raw.decode('utf-8', 'replace')!r}: not a valid folder name here")
            continue
        role = next((_ROLES[f] for f in flags if f in _ROLES), None)
        folders.setdefault(name, RemoteFolder(raw, name, role))
    return sorted(folders.values(), key=lambda f: (f.name != INBOX, f.name))


def _local_name(raw: bytes, delimiter: bytes | None, personal: bytes) -> str | None:
    if personal and raw.startswith(personal) and raw.upper() != b"INBOX":
        raw = raw[len(personal) :]
    text = raw.decode("utf-8", "replace")
    parts = text.split(delimiter.decode("latin-1")) if delimiter else [text]
    decoded = []
    for part in parts:
        name = decode_mutf7(part)
        decoded.append((name if name is not None else part).replace(DELIMITER, "_"))
    try:
        return normalize_mailbox_name(DELIMITER.join(decoded))
    except ValueError:
        return None


# -- messages -------------------------------------------------------------------


class _NoBody(Exception):
    """The server answered for the message without its content."""


#: Octets asked for at a time (a partial FETCH, RFC 3501 section 6.4.5):
#: a larger message is spooled piece by piece, never whole in memory.
FETCH_CHUNK = MEMORY_LIMIT


def _fetch_fields(conn: imaplib.IMAP4, uid: int, items: str) -> dict[str, Any] | None:
    """
    The FETCH items of message *uid*, the items of every FETCH response
    about it taken together (a server may split them); ``None`` when the
    server answered nothing about it (it is gone).
    """
    typ, data = conn.uid("FETCH", str(uid), items)
    _ok(typ, data, f"UID FETCH {uid}")
    responses = []
    for response in join_imaplib(data):
        try:
            parsed = parse_imap(response)
        except ValueError:
            continue
        if len(parsed) >= 2 and isinstance(parsed[0], bytes) and isinstance(parsed[1], list):
            responses.append((parsed[0], pairs(parsed[1])))
    numbers = {number for number, fields in responses if fields.get("UID") == str(uid).encode("ascii")}
    if not numbers:
        return None
    fields: dict[str, Any] = {}
    for number, found in responses:
        if number in numbers:
            fields.update(found)
    return fields


class _CRLFWriter:
    """Writes pieces of a message to a spool with bare LFs turned into CRLF, across piece boundaries."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._after_cr = False

    def write(self, data: bytes) -> None:
        if not data:
            return
        if bare_lf_count(data, self._after_cr):
            out = to_crlf(data)
            if self._after_cr and data[:1] == b"\n":
                out = out[1:]  # its CR ended the previous piece
            data = out
        self.spool.write(data)
        self._after_cr = data[-1:] == b"\r"


def _fetch_message(conn: imaplib.IMAP4, uid: int, spool: Spool) -> tuple[frozenset[str], float | None] | None:
    """
    Fetch message *uid* of the selected folder into *spool* (CRLF line
    ends), :data:`FETCH_CHUNK` octets at a time; its flags and internal
    date, or ``None`` when it is gone (expunged meanwhile).

    Raises:
        _NoBody: the server answered without the message's content.
    """
    fields = _fetch_fields(conn, uid, f"(UID FLAGS INTERNALDATE BODY.PEEK[]<0.{FETCH_CHUNK}>)")
    if fields is None:
        return None
    piece = fields.get("BODY[]<0>", fields.get("BODY[]"))
    if not isinstance(piece, bytes):
        raise _NoBody
    writer = _CRLFWriter(spool)
    writer.write(piece)
    offset = len(piece)
    while len(piece) >= FETCH_CHUNK:
        more = _fetch_fields(conn, uid, f"(UID BODY.PEEK[]<{offset}.{FETCH_CHUNK}>)")
        if more is None:
            return None
        piece = more.get(f"BODY[]<{offset}>")
        if not isinstance(piece, bytes):
            raise _NoBody
        writer.write(piece)
        offset += len(piece)
    flag_items = fields.get("FLAGS")
    flags = (
        [f.decode("utf-8", "replace") for f in flag_items if isinstance(f, bytes)]
        if isinstance(flag_items, list)
        else []
    )
    date_item = fields.get("INTERNALDATE")
    date = parse_internaldate(date_item.decode("ascii", "replace")) if isinstance(date_item, bytes) else None
    return safe_flags(flags), date


def _uids_after(conn: imaplib.IMAP4, last: int) -> list[int]:
    typ, data = conn.uid("SEARCH", "UID", f"{last + 1}:*")
    _ok(typ, data, "UID SEARCH")
    uids: set[int] = set()
    for line in data:
        if isinstance(line, bytes):
            uids.update(int(word) for word in line.split() if word.isdigit())
    return sorted(uid for uid in uids if uid > last)


_MESSAGE_ID = re.compile(rb"^message-id[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


def _message_id(header: bytes) -> str | None:
    match = _MESSAGE_ID.search(header)
    if match is None:
        return None
    return "".join(match.group(1).decode("latin-1").split()) or None


def _existing(box: Any, tail: int | None = None) -> Counter[tuple[str | None, int, int]]:
    """(Message-ID, size, internal date) of the messages of the destination folder *box* (its last *tail*), counted."""
    messages = wait(box.list_messages())
    if tail is not None:
        messages = messages[-tail:]
    keys: Counter[tuple[str | None, int, int]] = Counter()
    if not messages:
        return keys
    metadata = wait(box.get_metadata([m.uid for m in messages]))
    for m in messages:
        md = metadata.get(m.uid)
        message_id = None
        if md is not None:
            for name, value in md.headers:
                if name.lower() == "message-id":
                    message_id = "".join(value.split()) or None
                    break
        keys[(message_id, m.size, int(m.internal_date))] += 1
    return keys


class _Stop(Exception):
    """The run copied as many messages as it was allowed to."""


def import_imap(
    store: IMailStore,
    source: IMAPSource,
    state: ImportState,
    *,
    report: Callable[[str], Any] = lambda line: None,
    max_messages: int | None = None,
) -> Summary:
    """
    Copy every folder and message of *source* that *state* does not record
    as copied into *store* (see the module's docstring), recording each one
    as it is stored.  With *max_messages*, stop after that many (the next
    run goes on from there).

    Raises:
        MigrationError: the server cannot be reached, refuses the login, or fails a command.
    """
    summary = Summary()
    conn = connect(source)
    try:
        target = Target(store, summary)
        folders = list_folders(conn, summary)
        budget = [max_messages]
        try:
            for folder in folders:
                _import_folder(conn, target, folder, state, budget, report)
        except _Stop:
            report(f"stopped after {max_messages} messages: run the import again to go on")
        except (imaplib.IMAP4.abort, OSError) as e:
            raise MigrationError(
                f"the connection to {source.host}:{source.port} failed: {_text(e)}"
            ) from None
        except imaplib.IMAP4.error as e:
            raise MigrationError(f"{source.host}:{source.port}: {_text(e)}") from None
    finally:
        _logout(conn)
    return summary


def _import_folder(
    conn: imaplib.IMAP4,
    target: Target,
    folder: RemoteFolder,
    state: ImportState,
    budget: list[int | None],
    report: Callable[[str], Any],
) -> None:
    summary = target.summary
    key = folder.raw.decode("utf-8", "surrogateescape")
    conn.untagged_responses.pop("UIDVALIDITY", None)
    typ, data = conn.select(_quote(folder.raw), readonly=True)  # type: ignore[arg-type]  # octets as sent
    if typ != "OK":
        summary.skip(f"{folder.name}: EXAMINE failed: {_text(Exception(data[0] if data else b''))}")
        return
    _, validity = conn.response("UIDVALIDITY")
    uidvalidity = int(validity[0]) if validity and validity[0] and validity[0].isdigit() else 0
    recorded = state.get(key)
    existed = target.exists(folder.name)
    try:
        box = target.folder(folder.name, folder.role)
    except (InvalidMailboxName, ValueError) as e:
        summary.skip(f"{folder.name}: the folder cannot be created here: {e}")
        return
    summary.folders += 1
    last = 0
    dedupe = None
    if recorded is not None and recorded[0] == uidvalidity:
        last = recorded[1]
    elif existed and (recorded is not None or wait(box.status()).messages):
        dedupe = _existing(box)
    uids = _uids_after(conn, last)
    before = summary.messages, summary.bytes, summary.duplicates, summary.skipped
    note = (
        " (UIDVALIDITY changed: checking for duplicates)"
        if recorded is not None and dedupe is not None
        else ""
    )
    report(f"{folder.name}: {len(uids)} messages to copy{note}")
    # A run killed between storing a message and recording it leaves that
    # message as the folder's last here: the first one copied now is
    # checked against it.
    first_check = _existing(box, tail=1) if dedupe is None and last and uids else None
    for uid in uids:
        if budget[0] is not None and budget[0] <= 0:
            _report_folder(report, folder.name, summary, before)
            raise _Stop
        spool = Spool()
        try:
            _copy_message(
                conn, target, box, folder.name, uid, spool, dedupe if first_check is None else first_check
            )
            first_check = None
        finally:
            spool.close()
        state.set(key, uidvalidity, uid)
        if budget[0] is not None:
            budget[0] -= 1
    if not uids and (recorded is None or recorded[0] != uidvalidity):
        state.set(key, uidvalidity, last)
    _report_folder(report, folder.name, summary, before)


def _copy_message(
    conn: imaplib.IMAP4,
    target: Target,
    box: Any,
    name: str,
    uid: int,
    spool: Spool,
    dedupe: Counter[tuple[str | None, int, int]] | None,
) -> None:
    """Copy message *uid* of the selected folder into *box*, unless *dedupe* counts a copy there already."""
    summary = target.summary
    try:
        fetched = _fetch_message(conn, uid, spool)
    except _NoBody:
        summary.skip(f"{name}: UID {uid}: the server sent no content")
        return
    if fetched is None:
        return  # expunged meanwhile
    flags, date = fetched
    if date is None:
        date = time.time()
    if dedupe is not None:
        key = (_message_id(spool.head().split(b"\r\n\r\n", 1)[0]), spool.size, int(date))
        if dedupe[key] > 0:
            dedupe[key] -= 1  # one copy there for each copy on the source
            summary.duplicates += 1
            return
    try:
        target.append(box, spool.source(), flags, date)
    except (ValueError, OSError, InvalidMailboxName) as e:
        summary.skip(f"{name}: UID {uid} not stored: {e}")


def _report_folder(
    report: Callable[[str], Any], name: str, summary: Summary, before: tuple[int, ...]
) -> None:
    text = f"{name}: copied {summary.messages - before[0]} messages, {summary.bytes - before[1]} bytes"
    if summary.duplicates > before[2]:
        text += f", {summary.duplicates - before[2]} already there"
    if summary.skipped > before[3]:
        text += f", {summary.skipped - before[3]} skipped"
    report(text)
