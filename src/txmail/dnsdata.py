"""
DNS answers as plain data, for the checks that read the DNS (SPF, DKIM,
DMARC, ARC, blocklists, reverse DNS) and for the resolvers that give them.

A check asks one question at a time, a :class:`Question` (name and record
type), and gets back an :class:`Answer` whose :attr:`Answer.status` tells
apart the outcomes the RFCs treat differently: records found
(``OK``), the name exists without records of that type (``NODATA``), the
name does not exist (``NXDOMAIN``), and no usable answer at all
(``ERROR``: SERVFAIL, REFUSED, timeout).  SPF counts NODATA and NXDOMAIN as
"void lookups" (RFC 7208 section 4.6.4) and turns ``ERROR`` into
``temperror``; DMARC and DKIM give ``temperror`` on ``ERROR`` too.

Records by type:

* ``A``, ``AAAA``: the address as text (``"192.0.2.1"``, ``"2001:db8::1"``);
* ``PTR``, ``CNAME``, ``NS``: the target name, without the final dot;
* ``MX``: ``(preference, exchange)``, the exchange without the final dot;
* ``TXT``: one ``bytes`` per record, its character-strings concatenated
  with nothing between them (RFC 7208 section 3.3, RFC 6376 section 3.6.2.2).

Sans-IO checks are written as generators that ``yield`` a :class:`Question`
and are sent its :class:`Answer` (see :func:`run_sync` and
:func:`txmail.resolver.drive`), so they are tested with a dictionary of
answers and run in the reactor without threads.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "RECORD_TYPES",
    "Answer",
    "DNSStatus",
    "DictAnswers",
    "Question",
    "Resolving",
    "reverse_name",
    "run_sync",
]

#: The record types the resolvers look up.
RECORD_TYPES = frozenset({"A", "AAAA", "PTR", "CNAME", "NS", "MX", "TXT"})

T = TypeVar("T")


class DNSStatus(enum.Enum):
    """The outcome of one DNS question."""

    #: Records of the asked type were found.
    OK = "ok"
    #: The name exists but has no record of that type (NOERROR, empty answer).
    NODATA = "nodata"
    #: The name does not exist (RCODE 3).
    NXDOMAIN = "nxdomain"
    #: No usable answer: SERVFAIL, REFUSED, a timeout, a malformed response.
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Question:
    """
    One DNS question.

    Attributes:
        name: the domain name, without the final dot (case does not matter).
        rdtype: one of :data:`RECORD_TYPES`.
    """

    name: str
    rdtype: str

    def __post_init__(self) -> None:
        if self.rdtype not in RECORD_TYPES:
            raise ValueError(f"unsupported record type {self.rdtype!r}")

    @property
    def key(self) -> tuple[str, str]:
        """``(lower-cased name without final dot, type)``: how caches and tables index it."""
        return self.name.lower().rstrip("."), self.rdtype


@dataclass(frozen=True, slots=True)
class Answer:
    """
    The answer to a :class:`Question`.

    Attributes:
        status: the :class:`DNSStatus`.
        records: the records (see the module notes for their form by type);
            empty unless ``status`` is ``OK``.
        ttl: seconds the answer may be kept (for a negative answer, the
            zone's negative TTL when the server gave one).
        error: for ``ERROR``, what went wrong (for logs), else ``""``.
    """

    status: DNSStatus
    records: tuple[Any, ...] = ()
    ttl: int = 0
    error: str = ""

    @classmethod
    def of(cls, *records: Any, ttl: int = 300) -> Answer:
        """An ``OK`` answer with *records* (``NODATA`` when there are none)."""
        if not records:
            return cls(DNSStatus.NODATA, ttl=ttl)
        return cls(DNSStatus.OK, tuple(records), ttl)

    @property
    def ok(self) -> bool:
        return self.status is DNSStatus.OK

    @property
    def void(self) -> bool:
        """NODATA or NXDOMAIN: a "void lookup" in RFC 7208 section 4.6.4's sense."""
        return self.status in (DNSStatus.NODATA, DNSStatus.NXDOMAIN)

    @property
    def failed(self) -> bool:
        """No usable answer (``ERROR``): callers report a temporary error."""
        return self.status is DNSStatus.ERROR


#: A sans-IO check: yields questions, is sent answers, returns its result.
Resolving = Generator[Question, Answer, T]


def reverse_name(address: str) -> str:
    """
    The ``in-addr.arpa``/``ip6.arpa`` name of an IP address (RFC 1035
    section 3.5, RFC 3596 section 2.5), without the final dot.

    Raises:
        ValueError: *address* is not an IP address.
    """
    return ipaddress.ip_address(address).reverse_pointer


class DictAnswers:
    """
    Answers from a dictionary, for tests and for :func:`run_sync`.

    Keys are ``(name, type)``; values are an :class:`Answer`, a list of
    records (an empty list is NODATA), or a :class:`DNSStatus`.  A name
    that appears under some type but not the one asked answers NODATA; a
    name that appears nowhere answers NXDOMAIN.  TXT records may be given
    as ``str``.  ``questions`` records every question asked, in order.
    """

    def __init__(self, records: Mapping[tuple[str, str], Any] | None = None) -> None:
        self.records: dict[tuple[str, str], Any] = {}
        self.names: set[str] = set()
        self.questions: list[Question] = []
        for (name, rdtype), value in (records or {}).items():
            self.add(name, rdtype, value)

    def add(self, name: str, rdtype: str, value: Any) -> None:
        """Publish *value* for ``(name, rdtype)`` (replacing what was there)."""
        key = Question(name, rdtype).key
        self.records[key] = value
        self.names.add(key[0])

    def answer(self, question: Question) -> Answer:
        self.questions.append(question)
        key = question.key
        value = self.records.get(key)
        if isinstance(value, Answer):
            return value
        if isinstance(value, DNSStatus):
            return Answer(value, error="" if value is not DNSStatus.ERROR else "configured failure")
        if value is None:
            if key[0] in self.names:
                return Answer(DNSStatus.NODATA, ttl=300)
            return Answer(DNSStatus.NXDOMAIN, ttl=300)
        records = [v.encode() if key[1] == "TXT" and isinstance(v, str) else v for v in value]
        return Answer.of(*records)


def run_sync(check: Resolving[T], answers: DictAnswers) -> T:
    """Run a sans-IO check to its end with *answers*; its result."""
    try:
        question = next(check)
        while True:
            question = check.send(answers.answer(question))
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]  # the generator's return value, untyped
