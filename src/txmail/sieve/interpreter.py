"""
Running a parsed script against a message (RFC 5228 section 2.10 and the
extensions): :func:`run`.

A run never raises.  A runtime error (a bad address made of variables, a
conflict between actions, a missing included script) or a limit (steps,
actions, redirects, include depth) drops the actions taken so far and keeps
the message in the default mailbox (RFC 5228 section 2.10.6), with the
error in :attr:`Result.errors` for the log.

Action rules:

* ``keep``, ``discard``, ``fileinto`` and ``redirect`` (without ``:copy``,
  RFC 3894) and ``reject`` cancel the implicit keep (section 2.10.2);
* a second ``keep``, a ``fileinto`` to a mailbox already filed into, or a
  second ``redirect`` to one address is collapsed into the first (section
  2.10.3; their flags merged), and ``fileinto "INBOX"`` is a ``keep``;
* ``reject`` and ``ereject`` cannot be used with ``keep``, ``fileinto``,
  ``redirect``, ``vacation`` or another reject (RFC 5429 section 2.1, as
  Pigeonhole does), nor two ``vacation`` (RFC 5230 section 4.7);
* the implicit keep takes the flags of the internal variable (RFC 5232
  section 3) and the header section as editheader left it (RFC 5293).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import email.header
import email.utils
import re
import time
from collections.abc import Callable
from typing import Any, Protocol

from txmail.sieve.actions import (
    Action,
    Discard,
    DuplicateMark,
    FileInto,
    Keep,
    Redirect,
    Reject,
    Result,
    Vacation,
)
from txmail.sieve.commands import Node, is_field_name, is_valid_address, is_variable_name
from txmail.sieve.errors import LimitExceeded, SieveRuntimeError
from txmail.sieve.limits import Limits
from txmail.sieve.matching import compare_values, contains, glob_match, is_equal
from txmail.sieve.message import Envelope, SieveMessage, decode_field, unfold_text
from txmail.sieve.vacation import build_reply, default_handle, refusal, reply_subject

__all__ = ["Context", "DuplicateTracker", "VacationTracker", "run"]


class DuplicateTracker(Protocol):
    """Where the ``duplicate`` test (RFC 7352) remembers what it has seen."""

    def seen(self, id: str, handle: str, seconds: int) -> bool:
        """Whether *id* was recorded under *handle* less than *seconds* ago."""

    def mark(self, id: str, handle: str, seconds: int, last: bool) -> None:
        """Record *id* under *handle* for *seconds* (with *last*, from now even if already there)."""


class VacationTracker(Protocol):
    """Where vacation (RFC 5230 section 4.1) remembers whom it answered."""

    def already_replied(self, sender: str, handle: str, seconds: int) -> bool:
        """Whether *sender* got the reply *handle* less than *seconds* ago."""


@dataclasses.dataclass
class Context:
    """
    What a run needs from outside the message: *mailbox_exists* for
    ``mailboxexists`` (RFC 5490), the *duplicates* and *vacation* trackers,
    the user's own *addresses* (vacation), the time *now* (seconds since the
    epoch; the clock when ``None``) and the local time zone *zone* in
    minutes east of UTC (the ``date`` tests), the *domain* of generated
    Message-IDs, the subaddress *separator* (RFC 5233) and the *limits*
    (those of the script when ``None``).
    """

    mailbox_exists: Callable[[str], bool] | None = None
    duplicates: DuplicateTracker | None = None
    vacation: VacationTracker | None = None
    addresses: tuple[str, ...] = ()
    now: float | None = None
    zone: int = 0
    domain: str = "localhost"
    separator: str = "+"
    limits: Limits | None = None


class _Stop(Exception):
    pass


class _Return(Exception):
    pass


#: Header fields editheader may not add or delete (RFC 5293 section 6, as Pigeonhole).
_PROTECTED = frozenset({"received", "auto-submitted"})
_VARIABLE = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")


@dataclasses.dataclass
class _Scope:
    """One script's variables (RFC 5229) while it runs; globals are shared (RFC 6609)."""

    script: Any
    variables: dict[str, str] = dataclasses.field(default_factory=dict)
    declared: set[str] = dataclasses.field(default_factory=set)
    match: list[str] = dataclasses.field(default_factory=list)
    #: The script requires "variables" (strings are expanded only then).
    has_variables: bool = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.has_variables = "variables" in self.script.extensions


class _Run:
    def __init__(self, script: Any, message: SieveMessage, envelope: Envelope, context: Context) -> None:
        self.root = script
        self.message = message
        self.envelope = envelope
        self.context = context
        self.limits: Limits = context.limits or script.limits
        self.now = time.time() if context.now is None else context.now
        self.steps = 0
        self.actions: list[Action] = []
        self.implicit_keep = True
        self.flags: list[str] = []
        self.globals: dict[str, str] = {}
        self.fields: list[tuple[str, str]] | None = None  # editheader's copy
        self.once: set[tuple[str, str]] = set()
        self.depth = 0
        self.duplicates: list[DuplicateMark] = []
        self.log: list[str] = []
        self.rejected = False
        self.vacationed = False
        # Per run caches (a header test per rule of a 30-rule script would
        # otherwise decode the same fields 30 times): decoded values by
        # field name while editheader has not changed the header section,
        # and the addresses of a field value (pure).
        self._decoded: dict[str, list[str]] = {}
        self._addresses: dict[str, list[str]] = {}

    # -- bookkeeping ---------------------------------------------------------

    def step(self, n: int = 1) -> None:
        self.steps += n
        if self.steps > self.limits.max_steps:
            raise LimitExceeded(f"too many steps (more than {self.limits.max_steps})")

    def error(self, node: Node, message: str) -> SieveRuntimeError:
        return SieveRuntimeError(f"{node.name}: {message}", node.line, node.column)

    # -- the message as edited -------------------------------------------------

    def current_fields(self) -> list[tuple[str, str]]:
        return self.message.fields if self.fields is None else self.fields

    def raw_headers(self, name: str) -> list[str]:
        if self.fields is None:
            return self.message.raw_headers(name)
        lname = name.lower()
        return [v for n, v in self.fields if n.lower() == lname]

    def headers(self, name: str) -> list[str]:
        if self.fields is not None:
            return [decode_field(v) for v in self.raw_headers(name)]
        key = name.lower()
        found = self._decoded.get(key)
        if found is None:
            found = self._decoded[key] = [decode_field(v) for v in self.raw_headers(name)]
        return list(found)

    def addresses(self, raw: str) -> list[str]:
        """The addresses of the raw field value *raw* (RFC 5228 section 2.7.4), empty ones left out."""
        found = self._addresses.get(raw)
        if found is None:
            found = [a for _, a in email.utils.getaddresses([unfold_text(raw)]) if a]
            if len(self._addresses) < 256:
                self._addresses[raw] = found
        return found

    def edited(self) -> tuple[tuple[str, str], ...] | None:
        return None if self.fields is None else tuple(self.fields)

    # -- variables (RFC 5229) ------------------------------------------------

    def expand(self, s: str, scope: _Scope) -> str:
        if not scope.has_variables or "${" not in s:
            return s

        def value(m: re.Match[str]) -> str:
            name = m.group(1).lower()
            if name.isdigit():
                k = int(name)
                return scope.match[k] if k < len(scope.match) else ""
            if not is_variable_name(name):
                return m.group(0)
            if name.startswith("global."):
                return self.globals.get(name[7:], "")
            if "." in name:
                return m.group(0)  # an unknown namespace stays as it is
            if name in scope.declared:
                return self.globals.get(name, "")
            return scope.variables.get(name, "")

        out = _VARIABLE.sub(value, s)
        self.step(1 + len(out) // 1024)
        if len(out) > self.limits.max_string_length:
            raise LimitExceeded(f"a string grew longer than {self.limits.max_string_length} characters")
        return out

    def expand_all(self, values: list[str], scope: _Scope) -> list[str]:
        if not scope.has_variables:
            return list(values)
        return [self.expand(v, scope) for v in values]

    def set_variable(self, name: str, value: str, scope: _Scope) -> None:
        name = name.lower()
        value = value[: self.limits.max_variable_size]
        if name.startswith("global."):
            target, name = self.globals, name[7:]
        elif name in scope.declared:
            target = self.globals
        else:
            target = scope.variables
        if name not in target and len(target) >= self.limits.max_variables:
            raise LimitExceeded(f"more than {self.limits.max_variables} variables")
        target[name] = value

    def get_variable(self, name: str, scope: _Scope) -> str:
        return self.expand("${" + name + "}", _Scope(scope.script, scope.variables, scope.declared, []))

    # -- running -------------------------------------------------------------

    def run_script(self, script: Any, scope: _Scope) -> None:
        with contextlib.suppress(_Return):
            self.block(script.commands, scope)

    def block(self, nodes: Any, scope: _Scope) -> None:
        for node in nodes:
            self.step()
            getattr(self, "cmd_" + node.name)(node, scope)

    def test(self, node: Node, scope: _Scope) -> bool:
        self.step()
        return bool(getattr(self, "test_" + node.name)(node, scope))

    # -- control (RFC 5228 section 3) ------------------------------------------

    def cmd_if(self, node: Node, scope: _Scope) -> None:
        for branch in (node, *node.elifs):
            if self.test(branch.tests[0], scope):
                self.block(branch.block, scope)
                return
        if node.orelse is not None:
            self.block(node.orelse, scope)

    def cmd_stop(self, node: Node, scope: _Scope) -> None:
        raise _Stop()

    # -- include (RFC 6609) ----------------------------------------------------

    def cmd_include(self, node: Node, scope: _Scope) -> None:
        location = node.tag("location", ":personal")[1:]
        name = node.args[0]
        key = (location, name)
        if node.tag("once") is not None:
            if key in self.once:
                return
            self.once.add(key)
        included = self.root.includes.get(key)
        if included is None:
            if node.tag("optional") is not None:
                return
            raise self.error(node, f"the {location} script {name!r} does not exist")
        if self.depth >= self.limits.max_include_depth:
            raise LimitExceeded(f"include nested deeper than {self.limits.max_include_depth}")
        self.depth += 1
        try:
            self.run_script(included, _Scope(included))
        finally:
            self.depth -= 1

    def cmd_return(self, node: Node, scope: _Scope) -> None:
        raise _Return()

    def cmd_global(self, node: Node, scope: _Scope) -> None:
        for name in node.args[0]:
            scope.declared.add(name.lower())

    # -- actions (RFC 5228 section 4 and extensions) ---------------------------

    def add(self, node: Node, action: Action, cancels_keep: bool = True) -> None:
        kind = type(action)
        if self.rejected and kind in (Keep, FileInto, Redirect, Vacation, Reject):
            raise self.error(node, "reject cannot be combined with keep, fileinto, redirect or vacation")
        if kind is Reject and any(type(a) in (Keep, FileInto, Redirect, Vacation) for a in self.actions):
            raise self.error(node, "reject cannot be combined with keep, fileinto, redirect or vacation")
        if cancels_keep:
            self.implicit_keep = False
        for i, done in enumerate(self.actions):
            merged = _merge(done, action)
            if merged is not None:
                self.actions[i] = merged
                return
        if kind is Redirect:
            count = sum(1 for a in self.actions if type(a) is Redirect)
            if count >= self.limits.max_redirects:
                raise LimitExceeded(f"too many redirects (more than {self.limits.max_redirects})")
        if len(self.actions) >= self.limits.max_actions:
            raise LimitExceeded(f"total number of actions exceeds policy limit ({self.limits.max_actions})")
        self.actions.append(action)
        if kind is Reject:
            self.rejected = True

    def flag_list(self, node: Node, scope: _Scope) -> tuple[str, ...]:
        given = node.value("flags")
        if given is None:
            return tuple(self.flags)
        return tuple(_flags(self.expand_all(given, scope)))

    def cmd_keep(self, node: Node, scope: _Scope) -> None:
        self.add(node, Keep(self.flag_list(node, scope), self.edited()))

    def cmd_discard(self, node: Node, scope: _Scope) -> None:
        self.add(node, Discard())

    def cmd_fileinto(self, node: Node, scope: _Scope) -> None:
        mailbox = self.expand(node.args[0], scope)
        if not mailbox or any(ord(c) < 32 for c in mailbox):
            raise self.error(node, f"invalid mailbox name {mailbox!r}")
        copy = node.tag("copy") is not None
        flags = self.flag_list(node, scope)
        if mailbox.upper() == "INBOX":
            self.add(node, Keep(flags, self.edited()), cancels_keep=not copy)
            return
        create = node.tag("create") is not None
        self.add(node, FileInto(mailbox, flags, create, copy, self.edited()), cancels_keep=not copy)

    def cmd_redirect(self, node: Node, scope: _Scope) -> None:
        address = self.expand(node.args[0], scope).strip()
        if not is_valid_address(address):
            raise self.error(node, f"invalid address {address!r}")
        copy = node.tag("copy") is not None
        self.add(node, Redirect(address, copy, self.edited()), cancels_keep=not copy)

    def cmd_reject(self, node: Node, scope: _Scope) -> None:
        self.add(node, Reject(self.expand(node.args[0], scope), ereject=False))

    def cmd_ereject(self, node: Node, scope: _Scope) -> None:
        self.add(node, Reject(self.expand(node.args[0], scope), ereject=True))

    # -- vacation (RFC 5230, RFC 6131) -----------------------------------------

    def cmd_vacation(self, node: Node, scope: _Scope) -> None:
        if self.vacationed:
            raise self.error(node, "only one vacation action per run (RFC 5230 section 4.7)")
        self.vacationed = True
        if self.rejected:
            raise self.error(node, "reject cannot be combined with keep, fileinto, redirect or vacation")
        reason = self.expand(node.args[0], scope)
        subject = node.value("subject")
        subject = None if subject is None else self.expand(subject, scope)
        sender_field = node.value("from")
        sender_field = None if sender_field is None else self.expand(sender_field, scope)
        if sender_field is not None and not is_valid_address(email.utils.parseaddr(sender_field)[1]):
            raise self.error(node, f":from is not a valid address: {sender_field!r}")
        mime = node.tag("mime") is not None
        handle = node.value("handle")
        handle = (
            default_handle(reason, subject, sender_field, mime)
            if handle is None
            else self.expand(handle, scope)
        )
        seconds = self.vacation_period(node)
        own = [
            *self.context.addresses,
            *self.expand_all(node.value("addresses") or [], scope),
            self.envelope.rcpt_to,
            *([self.envelope.orig_to] if self.envelope.orig_to else []),
        ]
        to = self.envelope.mail_from
        why = refusal(self.message, to, own)
        tracker = self.context.vacation
        if why is None and tracker is not None and tracker.already_replied(to, handle, seconds):
            why = f"{to} was already answered in the last {seconds} seconds"
        if why is not None:
            self.log.append(f"vacation: no reply: {why}")
            return
        if sender_field is None:
            sender_field = self.recipient_address(own)
        subject = reply_subject(self.message, subject)
        reply = build_reply(
            self.message,
            to=to,
            sender=sender_field,
            subject=subject,
            reason=reason,
            mime=mime,
            now=self.now,
            message_id_domain=self.context.domain,
        )
        self.add(
            node,
            Vacation(to, sender_field, subject, reason, mime, handle, seconds, reply),
            cancels_keep=False,
        )

    def vacation_period(self, node: Node) -> int:
        limits = self.limits
        if node.tag("period") == ":days":
            seconds = max(1, node.value("period")) * 86400
        elif node.tag("period") == ":seconds":
            seconds = node.value("period")
        else:
            return limits.vacation_default_seconds
        return int(min(max(seconds, limits.vacation_min_seconds), limits.vacation_max_seconds))

    def recipient_address(self, own: list[str]) -> str:
        """The user's address the message came to (RFC 5230 section 4.4's default ``:from``)."""
        mine = {a.lower() for a in own if a}
        for name in ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc"):
            for _, address in email.utils.getaddresses(self.headers(name)):
                if address.lower() in mine:
                    return address
        return self.envelope.rcpt_to

    # -- variables (RFC 5229 section 4) ----------------------------------------

    def cmd_set(self, node: Node, scope: _Scope) -> None:
        value = self.expand(node.args[1], scope)
        case = node.tag("case")
        if case == ":lower":
            value = value.lower()
        elif case == ":upper":
            value = value.upper()
        first = node.tag("casefirst")
        if first == ":lowerfirst":
            value = value[:1].lower() + value[1:]
        elif first == ":upperfirst":
            value = value[:1].upper() + value[1:]
        if node.tag("quotewildcard") is not None:
            value = re.sub(r"([*?\\])", r"\\\1", value)
        if node.tag("length") is not None:
            value = str(len(value))
        self.set_variable(node.args[0], value, scope)

    # -- imap4flags (RFC 5232) -------------------------------------------------

    def _flag_target(self, node: Node, scope: _Scope) -> tuple[str | None, list[str]]:
        if len(node.args) == 2:
            name = self.expand(node.args[0], scope)
            if not is_variable_name(name):
                raise self.error(node, f"invalid variable name {name!r}")
            return name, _flags([self.get_variable(name, scope)])
        return None, list(self.flags)

    def _flag_store(self, name: str | None, flags: list[str], scope: _Scope) -> None:
        if name is None:
            self.flags = flags
        else:
            self.set_variable(name, " ".join(flags), scope)

    def cmd_setflag(self, node: Node, scope: _Scope) -> None:
        name, _ = self._flag_target(node, scope)
        self._flag_store(name, _flags(self.expand_all(node.args[-1], scope)), scope)

    def cmd_addflag(self, node: Node, scope: _Scope) -> None:
        name, flags = self._flag_target(node, scope)
        self._flag_store(name, _flags([*flags, *self.expand_all(node.args[-1], scope)]), scope)

    def cmd_removeflag(self, node: Node, scope: _Scope) -> None:
        name, flags = self._flag_target(node, scope)
        gone = {f.lower() for f in _flags(self.expand_all(node.args[-1], scope))}
        self._flag_store(name, [f for f in flags if f.lower() not in gone], scope)

    def test_hasflag(self, node: Node, scope: _Scope) -> bool:
        if len(node.args) == 2:
            flags = _flags([self.get_variable(self.expand(n, scope), scope) for n in node.args[0]])
        else:
            flags = list(self.flags)
        if node.tag("match") == ":count":
            return self.match(node, flags, node.args[-1], scope)
        keys = _flags(self.expand_all(node.args[-1], scope))
        return self.match(node, flags, keys, scope, expanded=True)

    # -- editheader (RFC 5293) -------------------------------------------------

    def cmd_addheader(self, node: Node, scope: _Scope) -> None:
        name = self.expand(node.args[0], scope)
        value = self.expand(node.args[1], scope)
        if not is_field_name(name):
            raise self.error(node, f"invalid header field name {name!r}")
        if name.lower() in _PROTECTED:
            self.log.append(f"addheader: {name} may not be added")
            return
        value = re.sub(r"\r?\n(?![ \t])", "\r\n ", value.strip("\r\n"))
        if not value.isascii():
            value = email.header.Header(value, "utf-8", header_name=name).encode()
        if len(name) + len(value) + 2 > self.limits.max_header_size:
            raise self.error(node, f"header field longer than {self.limits.max_header_size} octets")
        fields = list(self.current_fields())
        if node.tag("last") is not None:
            fields.append((name, value))
        else:
            fields.insert(0, (name, value))
        self.fields = fields

    def cmd_deleteheader(self, node: Node, scope: _Scope) -> None:
        name = self.expand(node.args[0], scope)
        if name.lower() in _PROTECTED:
            self.log.append(f"deleteheader: {name} may not be deleted")
            return
        patterns = self.expand_all(node.args[1], scope) if len(node.args) == 2 else None
        fields = list(self.current_fields())
        positions = [i for i, (n, _) in enumerate(fields) if n.lower() == name.lower()]
        index = node.value("index")
        if index is not None:
            k = len(positions) - index if node.tag("last") is not None else index - 1
            positions = [positions[k]] if 0 <= k < len(positions) else []
        doomed = set()
        for i in positions:
            if patterns is None or self.match(
                node, [decode_field(fields[i][1])], patterns, scope, capture=False
            ):
                doomed.add(i)
        if doomed:
            self.fields = [f for i, f in enumerate(fields) if i not in doomed]

    # -- tests (RFC 5228 section 5) --------------------------------------------

    def test_true(self, node: Node, scope: _Scope) -> bool:
        return True

    def test_false(self, node: Node, scope: _Scope) -> bool:
        return False

    def test_not(self, node: Node, scope: _Scope) -> bool:
        return not self.test(node.tests[0], scope)

    def test_anyof(self, node: Node, scope: _Scope) -> bool:
        return any(self.test(t, scope) for t in node.tests)

    def test_allof(self, node: Node, scope: _Scope) -> bool:
        return all(self.test(t, scope) for t in node.tests)

    def test_exists(self, node: Node, scope: _Scope) -> bool:
        return all(self.raw_headers(n) for n in self.expand_all(node.args[0], scope))

    def test_size(self, node: Node, scope: _Scope) -> bool:
        limit: int = node.args[0]
        if node.tag("size") == ":over":
            return self.message.size > limit
        return self.message.size < limit

    def indexed(self, node: Node, values: list[str]) -> list[str]:
        """RFC 5260 section 6: only the field at ``:index`` (from the end with ``:last``)."""
        index = node.value("index")
        if index is None:
            return values
        k = len(values) - index if node.tag("last") is not None else index - 1
        return [values[k]] if 0 <= k < len(values) else []

    def test_header(self, node: Node, scope: _Scope) -> bool:
        values = []
        for name in self.expand_all(node.args[0], scope):
            values.extend(self.indexed(node, self.headers(name)))
        return self.match(node, values, node.args[1], scope)

    def test_address(self, node: Node, scope: _Scope) -> bool:
        values: list[str] = []
        for name in self.expand_all(node.args[0], scope):
            for field in self.indexed(node, self.raw_headers(name)):
                for address in self.addresses(field):
                    part = self.address_part(node, address)
                    if part is not None:
                        values.append(part)
        return self.match(node, values, node.args[1], scope)

    def test_envelope(self, node: Node, scope: _Scope) -> bool:
        values: list[str] = []
        for name in self.expand_all(node.args[0], scope):
            address = self.envelope.part(name)
            if address is None:
                continue
            part = self.address_part(node, address.strip().strip("<>"))
            if part is not None:
                values.append(part)
        return self.match(node, values, node.args[1], scope)

    def address_part(self, node: Node, address: str) -> str | None:
        """RFC 5228 section 2.7.4 and RFC 5233: a part of *address*, ``None`` when it has none."""
        part = node.tag("addrpart", ":all")
        if part == ":all" or not address:
            return None if part == ":detail" and not address else address
        local, at, domain = address.rpartition("@")
        if not at:
            local, domain = address, ""
        if part == ":localpart":
            return local
        if part == ":domain":
            return domain
        user, sep, detail = local.partition(self.context.separator)
        if part == ":user":
            return user
        return detail if sep else None

    def test_body(self, node: Node, scope: _Scope) -> bool:
        transform = node.tag("transform", ":text")
        if transform == ":raw":
            values = [self.message.body_raw()]
        elif transform == ":content":
            values = list(self.message.body_parts(self.expand_all(node.value("transform"), scope)))
        else:
            values = list(self.message.body_text())
        self.step(sum(len(v) for v in values) // 4096)
        return self.match(node, values, node.args[0], scope)

    def test_string(self, node: Node, scope: _Scope) -> bool:
        values = self.expand_all(node.args[0], scope)
        if node.tag("match") == ":count":
            values = [v for v in values if v]
        return self.match(node, values, node.args[1], scope)

    def test_mailboxexists(self, node: Node, scope: _Scope) -> bool:
        check = self.context.mailbox_exists
        if check is None:
            return False
        return all(check(name) for name in self.expand_all(node.args[0], scope))

    # -- date and currentdate (RFC 5260) ---------------------------------------

    def test_date(self, node: Node, scope: _Scope) -> bool:
        header = self.expand(node.args[0], scope)
        part = self.expand(node.args[1], scope).lower()
        values = []
        for value in self.indexed(node, self.headers(header)):
            if header.lower() == "received":
                value = value.rpartition(";")[2]  # RFC 5260 section 4.1: the date after the last ";"
            when = _parse_date(value)
            if when is None:
                continue
            if node.tag("zone") != ":originalzone":
                when = when.astimezone(self.zone(node, scope))
            got = _date_part(when, part)
            if got is not None:
                values.append(got)
        return self.match(node, values, node.args[2], scope)

    def test_currentdate(self, node: Node, scope: _Scope) -> bool:
        part = self.expand(node.args[0], scope).lower()
        when = datetime.datetime.fromtimestamp(self.now, self.zone(node, scope))
        got = _date_part(when, part)
        return self.match(node, [] if got is None else [got], node.args[1], scope)

    def zone(self, node: Node, scope: _Scope) -> datetime.timezone:
        given = node.value("zone")
        if node.tag("zone") == ":zone" and given is not None:
            given = self.expand(given, scope)
            m = re.fullmatch(r"([+-])(\d\d)(\d\d)", given)
            if m is None:
                raise self.error(node, f"invalid :zone {given!r}")
            minutes = int(m.group(2)) * 60 + int(m.group(3))
            return datetime.timezone(datetime.timedelta(minutes=-minutes if m.group(1) == "-" else minutes))
        return datetime.timezone(datetime.timedelta(minutes=self.context.zone))

    # -- duplicate (RFC 7352) --------------------------------------------------

    def test_duplicate(self, node: Node, scope: _Scope) -> bool:
        kind = node.tag("id")
        if kind == ":uniqueid":
            ident = self.expand(node.value("id"), scope)
        else:
            name = self.expand(node.value("id"), scope) if kind == ":header" else "message-id"
            found = self.headers(name)
            if not found:
                return False
            ident = found[0].strip()
        handle = self.expand(node.value("handle") or "", scope)
        limits = self.limits
        seconds = node.value("seconds")
        seconds = limits.duplicate_default_seconds if seconds is None else seconds
        seconds = min(seconds, limits.duplicate_max_seconds)
        last = node.tag("last") is not None
        if any(m.id == ident and m.handle == handle for m in self.duplicates):
            return True
        tracker = self.context.duplicates
        seen = tracker is not None and tracker.seen(ident, handle, seconds)
        if not seen or last:
            self.duplicates.append(DuplicateMark(ident, handle, seconds, last))
        return seen

    # -- matching (RFC 5228 section 2.7, RFC 5231) ---------------------------------

    def match(
        self,
        node: Node,
        values: list[str],
        keys: list[str],
        scope: _Scope,
        capture: bool = True,
        expanded: bool = False,
    ) -> bool:
        """Whether one of *values* matches one of *keys* (variables expanded unless *expanded*)."""
        match_type = node.tag("match", ":is")
        comparator = node.value("comparator", "i;ascii-casemap")
        if not expanded:
            keys = self.expand_all(keys, scope)
        if match_type == ":count":
            relation = self.relation(node, scope)
            count = str(len(values))
            return any(compare_values(comparator, relation, count, key) for key in keys)
        for value in values:
            for key in keys:
                self.step()
                if match_type == ":is":
                    if is_equal(comparator, value, key):
                        return True
                elif match_type == ":contains":
                    if contains(comparator, value, key):
                        return True
                elif match_type == ":value":
                    if compare_values(comparator, self.relation(node, scope), value, key):
                        return True
                else:
                    budget = (self.limits.max_steps - self.steps) * 32
                    captured, work = glob_match(comparator, value, key, budget)
                    self.step(work // 32)
                    if captured is not None:
                        if capture and scope.has_variables:
                            scope.match = captured
                        return True
        return False

    def relation(self, node: Node, scope: _Scope) -> str:
        relation = self.expand(node.value("match"), scope).lower()
        if relation not in ("gt", "ge", "lt", "le", "eq", "ne"):
            raise self.error(node, f"unknown relation {relation!r}")
        return relation


def _merge(done: Action, new: Action) -> Action | None:
    """*done* and *new* as one action when they are the same (RFC 5228 section 2.10.3), else ``None``."""
    if type(done) is Keep and type(new) is Keep:
        return Keep(tuple(_flags([*done.flags, *new.flags])), new.headers)
    if type(done) is FileInto and type(new) is FileInto and done.mailbox == new.mailbox:
        return FileInto(
            done.mailbox,
            tuple(_flags([*done.flags, *new.flags])),
            done.create or new.create,
            done.copy and new.copy,
            new.headers,
        )
    if type(done) is Redirect and type(new) is Redirect and done.address.lower() == new.address.lower():
        return Redirect(done.address, done.copy and new.copy, new.headers)
    if type(done) is Discard and type(new) is Discard:
        return done
    return None


def _flags(values: list[str]) -> list[str]:
    """RFC 5232 section 3: space-separated flags, without repeats (case-insensitive)."""
    out: list[str] = []
    seen: set[str] = set()
    for value in values:
        for flag in value.split():
            if flag.lower() not in seen:
                seen.add(flag.lower())
                out.append(flag)
    return out


def _parse_date(value: str) -> datetime.datetime | None:
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when


_MJD_EPOCH = datetime.date(1858, 11, 17)
_DAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _zone_text(when: datetime.datetime, colon: bool) -> str:
    offset = when.utcoffset() or datetime.timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hh, mm = divmod(abs(minutes), 60)
    return f"{sign}{hh:02d}:{mm:02d}" if colon else f"{sign}{hh:02d}{mm:02d}"


def _date_part(when: datetime.datetime, part: str) -> str | None:
    """RFC 5260 section 4.2: *part* of *when*."""
    weekday = (when.weekday() + 1) % 7  # 0 is Sunday
    parts = {
        "year": f"{when.year:04d}",
        "month": f"{when.month:02d}",
        "day": f"{when.day:02d}",
        "date": f"{when.year:04d}-{when.month:02d}-{when.day:02d}",
        "julian": str((when.date() - _MJD_EPOCH).days),
        "hour": f"{when.hour:02d}",
        "minute": f"{when.minute:02d}",
        "second": f"{when.second:02d}",
        "time": f"{when.hour:02d}:{when.minute:02d}:{when.second:02d}",
        "iso8601": when.strftime("%Y-%m-%dT%H:%M:%S") + _zone_text(when, True),
        "std11": f"{_DAYS[weekday]}, {when.day} {_MONTHS[when.month - 1]} {when.year:04d} "
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} {_zone_text(when, False)}",
        "zone": _zone_text(when, False),
        "weekday": str(weekday),
    }
    return parts.get(part)


def run(script: Any, message: SieveMessage, envelope: Envelope, *, context: Context | None = None) -> Result:
    """
    Run *script* (from :func:`txmail.sieve.parse`) on *message* for the
    recipient in *envelope*.  Never raises: see the module docstring.
    """
    state = _Run(script, message, envelope, context or Context())
    try:
        with contextlib.suppress(_Stop):
            state.run_script(script, _Scope(script))
    except SieveRuntimeError as e:
        return _failed(state, str(e))
    except RecursionError:
        return _failed(state, "script nested too deeply")
    except Exception as e:  # never lose mail over an engine bug
        return _failed(state, f"internal error: {type(e).__name__}: {e}")
    return Result(
        actions=tuple(state.actions),
        implicit_keep=state.implicit_keep,
        keep_flags=tuple(state.flags),
        headers=state.edited(),
        duplicates=tuple(state.duplicates),
        log=tuple(state.log),
    )


def _failed(state: _Run, error: str) -> Result:
    return Result(actions=(), implicit_keep=True, errors=(error,), log=tuple(state.log))
