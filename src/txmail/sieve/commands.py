"""
The commands and tests a script may use, and the check of a parsed script
against them (RFC 5228 sections 3 to 5 and the extensions).

:func:`validate` turns the generic tree of :mod:`txmail.sieve.grammar` into
:class:`Node` objects: tagged arguments gathered by their group (one match
type, one comparator, one address part...), positional arguments checked and
reduced to ``str``, ``list[str]`` or ``int``, ``elsif`` and ``else`` folded
into their ``if``.  Everything that can be known before a message arrives is
an error here, with its line and column: an unknown command, an extension
used without ``require`` (RFC 5228 section 3.2), ``require`` after another
command, a repeated or conflicting tag, a missing or extra argument, an
unknown comparator, relation, date part or time zone, a bad redirect address.

The ``encoded-character`` extension (RFC 5228 section 2.4.2.4) is applied to
every string here, once the script's ``require`` is known.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from txmail.sieve.errors import SieveError
from txmail.sieve.grammar import Number, RawCommand, RawTest, StringList, Tag
from txmail.sieve.matching import COMPARATORS, RELATIONS

__all__ = ["EXTENSIONS", "Node", "is_valid_address", "validate"]

#: Every extension this engine implements (the default of :func:`txmail.sieve.parse`).
EXTENSIONS = frozenset(
    {
        "fileinto",
        "reject",
        "ereject",
        "envelope",
        "encoded-character",
        "variables",
        "body",
        "relational",
        "subaddress",
        "copy",
        "imap4flags",
        "vacation",
        "vacation-seconds",
        "date",
        "index",
        "mailbox",
        "include",
        "duplicate",
        "editheader",
        "comparator-i;octet",
        "comparator-i;ascii-casemap",
        "comparator-i;ascii-numeric",
    }
)

#: Extensions that bring another with them.
_IMPLIES = {"vacation-seconds": "vacation"}

DATE_PARTS = frozenset(
    {
        "year",
        "month",
        "day",
        "date",
        "julian",
        "hour",
        "minute",
        "second",
        "time",
        "iso8601",
        "std11",
        "zone",
        "weekday",
    }
)
ENVELOPE_PARTS = frozenset({"from", "to", "orig_to", "auth"})


@dataclasses.dataclass(frozen=True)
class _TagSpec:
    group: str
    value: str | None = None  # "string", "strings", "number" or None (no value)
    extension: str | None = None


@dataclasses.dataclass(frozen=True)
class _Spec:
    kind: str  # "control", "action", "test"
    extension: str | None
    shapes: tuple[tuple[str, ...], ...] = ((),)
    tags: dict[str, _TagSpec] = dataclasses.field(default_factory=dict)
    tests: str = "none"  # "none", "one", "many"
    block: bool = False
    required_groups: tuple[str, ...] = ()


def _tags(*parts: dict[str, _TagSpec], **more: _TagSpec) -> dict[str, _TagSpec]:
    out: dict[str, _TagSpec] = {}
    for part in parts:
        out.update(part)
    out.update({":" + k: v for k, v in more.items()})
    return out


_MATCH = {
    ":is": _TagSpec("match"),
    ":contains": _TagSpec("match"),
    ":matches": _TagSpec("match"),
    ":count": _TagSpec("match", "string", "relational"),
    ":value": _TagSpec("match", "string", "relational"),
}
_COMPARATOR = {":comparator": _TagSpec("comparator", "string")}
_ADDRESS_PART = {
    ":all": _TagSpec("addrpart"),
    ":localpart": _TagSpec("addrpart"),
    ":domain": _TagSpec("addrpart"),
    ":user": _TagSpec("addrpart", None, "subaddress"),
    ":detail": _TagSpec("addrpart", None, "subaddress"),
}
_INDEX = {":index": _TagSpec("index", "number", "index"), ":last": _TagSpec("last", None, "index")}
_FLAGS = {":flags": _TagSpec("flags", "strings", "imap4flags")}
_COPY = {":copy": _TagSpec("copy", None, "copy")}
_S, _L, _N = "string", "strings", "number"

SPECS: dict[str, _Spec] = {
    # RFC 5228 section 3: control commands.
    "require": _Spec("control", None, ((_L,),)),
    "if": _Spec("control", None, tests="one", block=True),
    "elsif": _Spec("control", None, tests="one", block=True),
    "else": _Spec("control", None, block=True),
    "stop": _Spec("control", None),
    # Section 4: actions.
    "keep": _Spec("action", None, tags=_tags(_FLAGS)),
    "discard": _Spec("action", None),
    "redirect": _Spec("action", None, ((_S,),), _tags(_COPY)),
    "fileinto": _Spec(
        "action", "fileinto", ((_S,),), _tags(_COPY, _FLAGS, create=_TagSpec("create", None, "mailbox"))
    ),
    "reject": _Spec("action", "reject", ((_S,),)),
    "ereject": _Spec("action", "ereject", ((_S,),)),
    "vacation": _Spec(
        "action",
        "vacation",
        ((_S,),),
        _tags(
            days=_TagSpec("period", _N),
            seconds=_TagSpec("period", _N, "vacation-seconds"),
            subject=_TagSpec("subject", _S),
            **{"from": _TagSpec("from", _S)},
            addresses=_TagSpec("addresses", _L),
            mime=_TagSpec("mime"),
            handle=_TagSpec("handle", _S),
        ),
    ),
    "set": _Spec(
        "action",
        "variables",
        ((_S, _S),),
        _tags(
            lower=_TagSpec("case"),
            upper=_TagSpec("case"),
            lowerfirst=_TagSpec("casefirst"),
            upperfirst=_TagSpec("casefirst"),
            quotewildcard=_TagSpec("quotewildcard"),
            length=_TagSpec("length"),
        ),
    ),
    "setflag": _Spec("action", "imap4flags", ((_L,), (_S, _L))),
    "addflag": _Spec("action", "imap4flags", ((_L,), (_S, _L))),
    "removeflag": _Spec("action", "imap4flags", ((_L,), (_S, _L))),
    "include": _Spec(
        "control",
        "include",
        ((_S,),),
        _tags(
            personal=_TagSpec("location"),
            **{"global": _TagSpec("location")},
            once=_TagSpec("once"),
            optional=_TagSpec("optional"),
        ),
    ),
    "return": _Spec("control", "include"),
    "global": _Spec("control", "include", ((_L,),)),
    "addheader": _Spec("action", "editheader", ((_S, _S),), _tags(last=_TagSpec("last"))),
    "deleteheader": _Spec(
        "action",
        "editheader",
        ((_S,), (_S, _L)),
        _tags(_COMPARATOR, _MATCH, index=_TagSpec("index", _N), last=_TagSpec("last")),
    ),
    # Section 5: tests.
    "address": _Spec("test", None, ((_L, _L),), _tags(_COMPARATOR, _ADDRESS_PART, _MATCH, _INDEX)),
    "envelope": _Spec("test", "envelope", ((_L, _L),), _tags(_COMPARATOR, _ADDRESS_PART, _MATCH)),
    "header": _Spec("test", None, ((_L, _L),), _tags(_COMPARATOR, _MATCH, _INDEX)),
    "exists": _Spec("test", None, ((_L,),)),
    "size": _Spec(
        "test",
        None,
        ((_N,),),
        _tags(over=_TagSpec("size"), under=_TagSpec("size")),
        required_groups=("size",),
    ),
    "true": _Spec("test", None),
    "false": _Spec("test", None),
    "not": _Spec("test", None, tests="one"),
    "anyof": _Spec("test", None, tests="many"),
    "allof": _Spec("test", None, tests="many"),
    "body": _Spec(
        "test",
        "body",
        ((_L,),),
        _tags(
            _COMPARATOR,
            _MATCH,
            raw=_TagSpec("transform"),
            content=_TagSpec("transform", _L),
            text=_TagSpec("transform"),
        ),
    ),
    "string": _Spec("test", "variables", ((_L, _L),), _tags(_COMPARATOR, _MATCH)),
    "hasflag": _Spec("test", "imap4flags", ((_L,), (_L, _L)), _tags(_COMPARATOR, _MATCH)),
    "date": _Spec(
        "test",
        "date",
        ((_S, _S, _L),),
        _tags(
            _COMPARATOR,
            _MATCH,
            _INDEX,
            zone=_TagSpec("zone", _S),
            originalzone=_TagSpec("zone"),
        ),
    ),
    "currentdate": _Spec("test", "date", ((_S, _L),), _tags(_COMPARATOR, _MATCH, zone=_TagSpec("zone", _S))),
    "mailboxexists": _Spec("test", "mailbox", ((_L,),)),
    "duplicate": _Spec(
        "test",
        "duplicate",
        ((),),
        _tags(
            handle=_TagSpec("handle", _S),
            header=_TagSpec("id", _S),
            uniqueid=_TagSpec("id", _S),
            seconds=_TagSpec("seconds", _N),
            last=_TagSpec("last"),
        ),
    ),
}


@dataclasses.dataclass
class Node:
    """
    A checked command or test.

    *tags* maps a group (``"match"``, ``"comparator"``, ``"addrpart"``,
    ``"period"``...) to ``(tag, value)``: ``(":count", "ge")``,
    ``(":comparator", "i;octet")``, ``(":once", None)``.
    """

    name: str
    line: int
    column: int
    tags: dict[str, tuple[str, Any]]
    args: list[Any]
    tests: list[Node]
    block: list[Node] | None = None
    #: ``if``: the ``elsif`` nodes that follow it, then its ``else`` block.
    elifs: list[Node] = dataclasses.field(default_factory=list)
    orelse: list[Node] | None = None

    def tag(self, group: str, default: Any = None) -> Any:
        """The tag chosen in *group* (``":contains"``), or *default*."""
        got = self.tags.get(group)
        return default if got is None else got[0]

    def value(self, group: str, default: Any = None) -> Any:
        """The value of the tag chosen in *group*, or *default*."""
        got = self.tags.get(group)
        return default if got is None else got[1]


# -- encoded-character (RFC 5228 section 2.4.2.4) --------------------------

_ENCODED = re.compile(r"\$\{(hex|unicode):([\t\r\n 0-9A-Fa-f]*)\}", re.IGNORECASE)


def _decode_encoded(s: str, line: int, column: int) -> str:
    def replace(m: re.Match[str]) -> str:
        words = m.group(2).split()
        if not words:
            return m.group(0)
        if m.group(1).lower() == "hex":
            if any(len(w) > 2 for w in words):
                return m.group(0)
            return bytes(int(w, 16) for w in words).decode("utf-8", errors="replace")
        out = []
        for w in words:
            cp = int(w[-8:] if len(w) > 8 else w, 16) if w.strip("0") else 0
            if len(w) > 8 and w[:-8].strip("0"):
                cp = 0x110000
            if 0xD800 <= cp <= 0xDFFF or cp > 0x10FFFF:
                raise SieveError(
                    f"invalid Unicode character U+{w.upper()} in an encoded character", line, column
                )
            out.append(chr(cp))
        return "".join(out)

    return _ENCODED.sub(replace, s) if "${" in s else s


# -- addresses -------------------------------------------------------------

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\x80-\U0010ffff-]+"
_LOCAL = rf'(?:{_ATEXT}(?:\.{_ATEXT})*|"(?:[^"\\\r\n]|\\.)*")'
_DOMAIN = r"(?:[A-Za-z0-9\x80-\U0010ffff](?:[A-Za-z0-9\x80-\U0010ffff-]*[A-Za-z0-9\x80-\U0010ffff])?\.?)+|\[[^\]\\\r\n]+\]"
_ADDRESS = re.compile(rf"{_LOCAL}@(?:{_DOMAIN})")


def is_valid_address(address: str) -> bool:
    """Whether *address* is an RFC 5322 addr-spec (what ``redirect`` takes, RFC 5228 section 4.2)."""
    return len(address) <= 998 and _ADDRESS.fullmatch(address.strip()) is not None


_FIELD_NAME = re.compile(r"[!-9;-~]+")
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_ZONE = re.compile(r"[+-]\d{4}")


def is_field_name(name: str) -> bool:
    """RFC 5322 section 3.6.8: printable US-ASCII but the colon."""
    return _FIELD_NAME.fullmatch(name) is not None


def is_variable_name(name: str) -> bool:
    """RFC 5229 section 3: an identifier, or namespaced (``global.name``, RFC 6609)."""
    return _VARIABLE_NAME.fullmatch(name) is not None


class _Validator:
    def __init__(self, available: frozenset[str]) -> None:
        self.available = available
        self.required: set[str] = set()

    def has(self, extension: str | None) -> bool:
        return extension is None or extension in self.required

    def validate(self, commands: list[RawCommand]) -> list[Node]:
        seen_other = False
        for cmd in commands:
            if cmd.name == "require":
                if seen_other:
                    raise SieveError(
                        "require must come before every other command (RFC 5228 section 3.2)",
                        cmd.line,
                        cmd.column,
                    )
                self._require(cmd)
            else:
                seen_other = True
        return self.block(commands, top=True)

    def _require(self, cmd: RawCommand) -> None:
        node = self.node(cmd, "control")
        for name in node.args[0]:
            if name not in self.available:
                raise SieveError(f"unknown extension {name!r} in require", cmd.line, cmd.column)
            self.required.add(name)
            if name in _IMPLIES:
                self.required.add(_IMPLIES[name])

    def block(self, commands: list[RawCommand], top: bool = False) -> list[Node]:
        out: list[Node] = []
        for cmd in commands:
            if cmd.name == "require":
                if not top:
                    raise SieveError("require is allowed only at the top of the script", cmd.line, cmd.column)
                continue
            node = self.node(cmd, "command")
            if node.name in ("elsif", "else"):
                prev = out[-1] if out else None
                if prev is None or prev.name != "if" or prev.orelse is not None:
                    raise SieveError(f"{node.name} without a preceding if", cmd.line, cmd.column)
                if node.name == "elsif":
                    prev.elifs.append(node)
                else:
                    prev.orelse = node.block
                continue
            out.append(node)
        return out

    def node(self, raw: RawCommand | RawTest, where: str) -> Node:
        spec = SPECS.get(raw.name)
        what = "test" if where == "test" else "command"
        if spec is None or (spec.kind == "test") != (where == "test"):
            if spec is not None:
                raise SieveError(
                    f"{raw.name} is a {'test' if spec.kind == 'test' else 'command'}, not a {what}",
                    raw.line,
                    raw.column,
                )
            raise SieveError(f"unknown {what} {raw.name!r}", raw.line, raw.column)
        if spec.extension is not None and spec.extension not in self.required:
            raise SieveError(
                f"the {raw.name} {what} needs require {_quote(spec.extension)}",
                raw.line,
                raw.column,
            )
        tags, positional = self._arguments(raw, spec)
        args = self._shape(raw, spec, positional)
        tests = self._tests(raw, spec)
        block = None
        if isinstance(raw, RawCommand):
            if spec.block and raw.block is None:
                raise SieveError(f"{raw.name} needs a block {{ ... }}", raw.line, raw.column)
            if not spec.block and raw.block is not None:
                raise SieveError(f"{raw.name} takes no block", raw.line, raw.column)
            if raw.block is not None:
                block = self.block(raw.block)
        node = Node(raw.name, raw.line, raw.column, tags, args, tests, block)
        self._check(node)
        return node

    def _arguments(self, raw: RawCommand | RawTest, spec: _Spec) -> tuple[dict[str, Any], list[Any]]:
        tags: dict[str, tuple[str, Any]] = {}
        positional: list[StringList | Number] = []
        arguments = raw.arguments
        i = 0
        while i < len(arguments):
            arg = arguments[i]
            i += 1
            if not isinstance(arg, Tag):
                positional.append(arg)
                continue
            if positional:
                raise SieveError(
                    f"tagged argument {arg.name} after a positional argument of {raw.name}",
                    arg.line,
                    arg.column,
                )
            ts = spec.tags.get(arg.name)
            if ts is None:
                raise SieveError(f"unknown tagged argument {arg.name} for {raw.name}", arg.line, arg.column)
            if not self.has(ts.extension):
                raise SieveError(f"{arg.name} needs require {_quote(ts.extension)}", arg.line, arg.column)
            if ts.group in tags:
                first = tags[ts.group][0]
                problem = "given twice" if first == arg.name else f"conflicts with {first}"
                raise SieveError(f"{arg.name} {problem}", arg.line, arg.column)
            value: Any = None
            if ts.value is not None:
                if i >= len(arguments) or isinstance(arguments[i], Tag):
                    raise SieveError(f"{arg.name} needs a {_KINDS[ts.value]} after it", arg.line, arg.column)
                value = self._convert(arguments[i], ts.value, f"{arg.name}")
                i += 1
            tags[ts.group] = (arg.name, value)
        for group in spec.required_groups:
            if group not in tags:
                options = " or ".join(t for t, ts in spec.tags.items() if ts.group == group)
                raise SieveError(f"{raw.name} needs {options}", raw.line, raw.column)
        return tags, positional

    def _convert(self, arg: StringList | Number | Tag, kind: str, what: str) -> Any:
        if kind == "number":
            if not isinstance(arg, Number):
                raise SieveError(f"{what} needs a number", arg.line, arg.column)
            return arg.value
        if not isinstance(arg, StringList):
            raise SieveError(f"{what} needs a {_KINDS[kind]}", arg.line, arg.column)
        values = [self._string(v, arg) for v in arg.values]
        if kind == "string":
            if arg.is_list:
                raise SieveError(f"{what} needs a single string, not a list", arg.line, arg.column)
            return values[0]
        return values

    def _string(self, value: str, arg: StringList) -> str:
        if "encoded-character" in self.required:
            return _decode_encoded(value, arg.line, arg.column)
        return value

    def _shape(self, raw: RawCommand | RawTest, spec: _Spec, positional: list[Any]) -> list[Any]:
        shapes = [s for s in spec.shapes if len(s) == len(positional)]
        if not shapes:
            counts = sorted({len(s) for s in spec.shapes})
            want = " or ".join(str(c) for c in counts)
            where = positional[len(positional) - 1] if positional else raw
            raise SieveError(
                f"{raw.name} takes {want} positional argument{'s' if counts[-1] != 1 else ''}, "
                f"found {len(positional)}",
                where.line,
                where.column,
            )
        shape = shapes[-1]
        return [self._convert(arg, kind, f"{raw.name}") for arg, kind in zip(positional, shape, strict=True)]

    def _tests(self, raw: RawCommand | RawTest, spec: _Spec) -> list[Node]:
        if spec.tests == "none" and raw.tests:
            first = raw.tests[0]
            other = SPECS.get(first.name)
            if other is not None and other.kind != "test":
                raise SieveError(f"missing ';' after the {raw.name} command", first.line, first.column)
            raise SieveError(f"{raw.name} takes no test", first.line, first.column)
        if spec.tests == "one" and len(raw.tests) != 1:
            raise SieveError(f"{raw.name} needs exactly one test", raw.line, raw.column)
        if spec.tests == "many" and not raw.tests:
            raise SieveError(f"{raw.name} needs a list of tests", raw.line, raw.column)
        return [self.node(t, "test") for t in raw.tests]

    def _check(self, node: Node) -> None:
        """The checks of argument values that need no message."""
        comparator = node.value("comparator")
        if comparator is not None:
            if comparator not in COMPARATORS:
                self._fail(node, f"unknown comparator {comparator!r}")
            if comparator == "i;ascii-numeric" and "comparator-i;ascii-numeric" not in self.required:
                self._fail(node, 'the i;ascii-numeric comparator needs require "comparator-i;ascii-numeric"')
            if comparator == "i;ascii-numeric" and node.tag("match") in (":contains", ":matches"):
                self._fail(node, f"the i;ascii-numeric comparator cannot do {node.tag('match')}")
        relation = node.value("match")
        if node.tag("match") in (":count", ":value") and not _dynamic(relation) and relation not in RELATIONS:
            self._fail(node, f"unknown relation {relation!r} (one of {', '.join(RELATIONS)})")
        check = getattr(self, "_check_" + node.name, None)
        if check is not None:
            check(node)

    def _fail(self, node: Node, message: str) -> None:
        raise SieveError(message, node.line, node.column)

    def _check_redirect(self, node: Node) -> None:
        if not _dynamic(node.args[0]) and not is_valid_address(node.args[0]):
            self._fail(node, f"redirect: invalid address {node.args[0]!r}")

    def _check_vacation(self, node: Node) -> None:
        sender = node.value("from")
        if sender is not None and not _dynamic(sender) and not _parse_from(sender):
            self._fail(node, f"vacation :from: invalid address {sender!r}")
        for address in node.value("addresses") or ():
            if not _dynamic(address) and not is_valid_address(address):
                self._fail(node, f"vacation :addresses: invalid address {address!r}")

    def _check_set(self, node: Node) -> None:
        name = node.args[0]
        if not is_variable_name(name):
            self._fail(node, f"set: invalid variable name {name!r}")

    def _check_envelope(self, node: Node) -> None:
        for part in node.args[0]:
            if not _dynamic(part) and part.lower() not in ENVELOPE_PARTS:
                self._fail(node, f"envelope: unknown envelope part {part!r}")

    def _check_header(self, node: Node) -> None:
        self._field_names(node, node.args[0])
        self._index(node)

    def _check_address(self, node: Node) -> None:
        self._field_names(node, node.args[0])
        self._index(node)

    def _check_exists(self, node: Node) -> None:
        self._field_names(node, node.args[0])

    def _check_date(self, node: Node) -> None:
        self._field_names(node, [node.args[0]])
        self._date(node, node.args[1])
        self._index(node)

    def _check_currentdate(self, node: Node) -> None:
        self._date(node, node.args[0])

    def _date(self, node: Node, part: str) -> None:
        if not _dynamic(part) and part.lower() not in DATE_PARTS:
            self._fail(node, f"{node.name}: unknown date part {part!r}")
        zone = node.value("zone")
        if zone is not None and not _dynamic(zone) and not _ZONE.fullmatch(zone):
            self._fail(node, f"{node.name}: invalid :zone {zone!r} (want +hhmm or -hhmm)")

    def _index(self, node: Node) -> None:
        if node.tag("last") is not None and node.tag("index") is None:
            self._fail(node, ":last needs :index")
        if node.tag("index") is not None and node.value("index") < 1:
            self._fail(node, ":index counts from 1")

    def _check_deleteheader(self, node: Node) -> None:
        self._field_names(node, [node.args[0]])
        self._index(node)

    def _check_addheader(self, node: Node) -> None:
        self._field_names(node, [node.args[0]])

    def _check_include(self, node: Node) -> None:
        name = node.args[0]
        if not name or "/" in name or _dynamic(name):
            self._fail(node, f"include: invalid script name {name!r}")

    def _check_global(self, node: Node) -> None:
        if "variables" not in self.required:
            self._fail(node, 'global needs require "variables" (RFC 6609 section 3.3)')
        for name in node.args[0]:
            if not is_variable_name(name) or "." in name:
                self._fail(node, f"global: invalid variable name {name!r}")

    def _check_duplicate(self, node: Node) -> None:
        header = node.value("id") if node.tag("id") == ":header" else None
        if header is not None:
            self._field_names(node, [header])

    def _field_names(self, node: Node, names: list[str]) -> None:
        for name in names:
            if not _dynamic(name) and not is_field_name(name):
                self._fail(node, f"{node.name}: invalid header field name {name!r}")


_KINDS = {"string": "string", "strings": "string list", "number": "number"}


def _quote(name: str | None) -> str:
    return f'"{name}"'


def _dynamic(s: Any) -> bool:
    """Whether *s* may change when variables are expanded (it is checked at run time then)."""
    return isinstance(s, str) and "${" in s


def _parse_from(value: str) -> bool:
    from email.utils import parseaddr

    _, address = parseaddr(value)
    return bool(address) and is_valid_address(address)


def validate(commands: list[RawCommand], available: frozenset[str]) -> tuple[list[Node], frozenset[str]]:
    """Check *commands* against the extensions *available*: the nodes and the extensions required."""
    validator = _Validator(available)
    nodes = validator.validate(commands)
    return nodes, frozenset(validator.required)
