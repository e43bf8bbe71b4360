"""
On-disk formats of the Maildir store: folder names, message file names,
flag letters, ``dovecot-keywords`` and the ``txmail-index`` log.

Pure functions: no I/O, no Twisted.

Maildir file names (https://cr.yp.to/proto/maildir.html, Dovecot's
``maildir-filename``): ``<base>`` in ``new/``, ``<base>:2,<letters>`` in
``cur/``, where *base* is ``<secs>.M<usec>P<pid>Q<counter>.<host>,S=<size>``
for the files txmail writes, with ``,W=<size with CRLF line ends>`` after it
when the file holds bare LFs (as Dovecot names its files).  Letters are sorted in ASCII order: ``D``
(\\Draft), ``F`` (\\Flagged), ``R`` (\\Answered, "replied"), ``S``
(\\Seen), ``T`` (\\Deleted, "trashed"), and lower-case ``a``..``z`` for
keywords numbered 0..25 in the folder's ``dovecot-keywords`` file, as
Dovecot does.  Other letters (``P``, "passed") are kept but not exposed.

Folder names (Maildir++, as Dovecot's default ``LAYOUT=maildir++``):
``INBOX`` is the user's directory itself; ``a/b`` is ``.a.b`` below it.  A
``.`` or ``%`` inside a name component is written ``%2E``/``%25`` so that
the mapping is reversible.

The index log (one text line per record, fields separated by TAB)::

    txmail-index 3 <uidvalidity> <uidnext> <highestmodseq> <recent>   header
    A <uid> <modseq> <size> <internaldate> <cacheoff> <cachelen> <base> <flags> <raw> <savedate> <emailid>
    F <uid> <modseq> <flags>          flags changed
    X <modseq> <uid>,<uid>,... [<emailid>,<emailid>,...]
                                      expunged (<uid> may be a range <lo>:<hi>)
    M <uid> <cacheoff> <cachelen>     metadata cached (again)
    R <watermark>                     \\Recent claimed up to this UID

*flags* is a space-separated list (keywords are IMAP atoms, which hold no
space); *base* has ``%``, TAB, CR and LF percent-escaped.  *size* is the
size served, with CRLF line ends (RFC822.SIZE); *raw* the size of the file,
smaller when the file holds bare LFs, which are then served as CRLF.

Version 1 (before *raw*): its ``A`` records have no *raw* field and their
*size* is the file's; they are read as "not checked yet" (``raw`` is
``None``), and the store checks those files once and rewrites the index as
version 3.  Version 2 (before *savedate* and *emailid*, RFC 8514 and
RFC 8474): its ``A`` records are read with the internal date as the save
date and an EMAILID derived from the base name
(:func:`txmail.store._base.derived_email_id`), and the index is rewritten
as version 3.  The ``X`` records are the expunge history QRESYNC needs (RFC
7162 section 3.2); a rewritten index keeps them, merged into at most
:data:`EXPUNGE_RECORDS` records with UID ranges, after an ``X <modseq>``
record without UIDs that marks the history complete after *modseq* (an
index without one is complete only from the time it is read).  An ``X``
record's optional last field holds the EMAILIDs of its UIDs, in the order
of the UIDs (ranges expanded), empty where unknown
(:class:`txmail.interfaces.IExpungedEmailIds`); older ``X`` records
without it are read as UIDs of unknown EMAILIDs.
A line that does
not parse, or a last line without its line end (a torn write), marks the
index damaged: the readable records are kept and the store rewrites it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from txmail.model import (
    ANSWERED,
    DELETED,
    DELIMITER,
    DRAFT,
    FLAGGED,
    INBOX,
    SEEN,
    normalize_flags,
    normalize_mailbox_name,
)
from txmail.store._ids import derived_email_id, is_object_id

__all__ = [
    "EXPUNGE_RECORDS",
    "INDEX_MAGIC",
    "INDEX_VERSION",
    "INDEX_VERSIONS",
    "KEYWORD_LETTERS",
    "SYSTEM_LETTERS",
    "IndexRecord",
    "ParsedIndex",
    "compact_expunge_log",
    "file_name",
    "flags_from_letters",
    "folder_dir_name",
    "folder_from_dir_name",
    "format_keywords",
    "index_add",
    "index_expunge",
    "index_flags",
    "index_header",
    "index_meta",
    "index_recent",
    "letters_for",
    "name_sizes",
    "parse_index",
    "parse_keywords",
    "split_file_name",
]

SYSTEM_LETTERS = {DRAFT: "D", FLAGGED: "F", ANSWERED: "R", SEEN: "S", DELETED: "T"}
_LETTER_SYSTEM = {v: k for k, v in SYSTEM_LETTERS.items()}
KEYWORD_LETTERS = "abcdefghijklmnopqrstuvwxyz"

INDEX_MAGIC = "txmail-index"
INDEX_VERSION = 3
#: The versions :func:`parse_index` reads.
INDEX_VERSIONS = (1, 2, 3)


# -- folder names -------------------------------------------------------


def _escape_component(part: str) -> str:
    return part.replace("%", "%25").replace(".", "%2E")


def _unescape_component(part: str) -> str | None:
    out = []
    i = 0
    while i < len(part):
        ch = part[i]
        if ch == "%":
            code = part[i + 1 : i + 3]
            if len(code) != 2 or not all(c in "0123456789abcdefABCDEF" for c in code):
                return None
            out.append(chr(int(code, 16)))
            i += 3
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def folder_dir_name(name: str) -> str:
    """
    The directory name (below the user's directory) of a normalised
    mailbox name other than ``INBOX``: ``Archive/2024`` is ``.Archive.2024``.
    """
    if name == INBOX:
        raise ValueError("INBOX is the user's directory itself")
    return "." + ".".join(_escape_component(p) for p in name.split(DELIMITER))


def folder_from_dir_name(dir_name: str) -> str | None:
    """
    The mailbox name of a Maildir++ folder directory, or ``None`` for a
    directory that is not one (or whose name is not canonical).
    """
    if not dir_name.startswith(".") or dir_name in (".", ".."):
        return None
    parts = []
    for raw in dir_name[1:].split("."):
        part = _unescape_component(raw)
        if not part:
            return None
        parts.append(part)
    name = DELIMITER.join(parts)
    try:
        canonical = normalize_mailbox_name(name)
    except ValueError:
        return None
    if canonical != name or canonical == INBOX or any(DELIMITER in p for p in parts):
        return None
    return canonical


# -- message file names ---------------------------------------------------


def split_file_name(name: str) -> tuple[str, str | None]:
    """
    Split a Maildir file name into its base and flag letters (``None`` when
    the name carries no ``:2,`` info).
    """
    base, sep, info = name.partition(":")
    if sep and info.startswith("2,"):
        return base, info[2:]
    return base, None


def name_sizes(base: str) -> tuple[int | None, int | None]:
    """
    The ``S=`` (file size) and ``W=`` (size with CRLF line ends) a file's
    base name carries, as Dovecot and txmail name files; ``None`` for each
    one absent or not a number.  They follow the first comma (Maildir
    writers escape commas in the host name).
    """
    _, comma, rest = base.partition(",")
    if not comma:
        return None, None
    s = w = None
    for part in rest.split(","):
        key, eq, value = part.partition("=")
        if eq and value.isdigit() and value.isascii():
            if key == "S":
                s = int(value)
            elif key == "W":
                w = int(value)
    return s, w


def file_name(base: str, letters: str | None) -> str:
    """A file name of *base* with *letters* (``None``: no info, for ``new/``)."""
    if letters is None:
        return base
    return f"{base}:2,{letters}"


def flags_from_letters(letters: str | None, keywords: dict[str, str]) -> frozenset[str]:
    """The flags that *letters* encode; *keywords* maps letter to keyword."""
    if not letters:
        return frozenset()
    out = set()
    for ch in letters:
        flag = _LETTER_SYSTEM.get(ch) or keywords.get(ch)
        if flag is not None:
            out.add(flag)
    return frozenset(out)


def letters_for(flags: Iterable[str], letter_of: dict[str, str], keep: str = "") -> str:
    """
    The sorted letters encoding *flags* (keywords through *letter_of*, those
    without a letter are left out), plus the letters of *keep* that encode
    nothing txmail knows (such as ``P``).
    """
    out = set(keep)
    out.difference_update(SYSTEM_LETTERS.values())
    out.difference_update(letter_of.values())
    for flag in flags:
        letter = SYSTEM_LETTERS.get(flag) or letter_of.get(flag)
        if letter is not None:
            out.add(letter)
    return "".join(sorted(out))


def _is_keyword(name: str) -> bool:
    """Whether *name* is a keyword an IMAP client can see (an atom, no backslash)."""
    if not name or name.startswith("\\"):
        return False
    try:
        return normalize_flags([name]) == {name}
    except ValueError:
        return False


def parse_keywords(data: bytes) -> dict[str, str]:
    """Parse ``dovecot-keywords`` (``N name`` lines) into letter -> keyword."""
    out: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        num, _, keyword = line.strip().partition(" ")
        if num.isdigit() and int(num) < len(KEYWORD_LETTERS) and _is_keyword(keyword):
            out[KEYWORD_LETTERS[int(num)]] = keyword
    return out


def format_keywords(keywords: dict[str, str]) -> bytes:
    """Serialise letter -> keyword as ``dovecot-keywords``."""
    lines = [f"{KEYWORD_LETTERS.index(letter)} {kw}\n" for letter, kw in sorted(keywords.items())]
    return "".join(lines).encode("utf-8")


# -- the index log ------------------------------------------------------


def _esc(base: str) -> str:
    return base.replace("%", "%25").replace("\t", "%09").replace("\n", "%0A").replace("\r", "%0D")


def _unesc(base: str) -> str:
    if "%" not in base:
        return base
    return base.replace("%09", "\t").replace("%0A", "\n").replace("%0D", "\r").replace("%25", "%")


def _flags_text(flags: Iterable[str]) -> str:
    return " ".join(sorted(flags))


def index_header(uidvalidity: int, uidnext: int, modseq: int, recent: int) -> str:
    return f"{INDEX_MAGIC}\t{INDEX_VERSION}\t{uidvalidity}\t{uidnext}\t{modseq}\t{recent}\n"


def index_add(
    uid: int,
    modseq: int,
    size: int,
    date: float,
    coff: int,
    clen: int,
    base: str,
    flags: Iterable[str],
    raw: int | None = None,
    save_date: float | None = None,
    email_id: str | None = None,
) -> str:
    """
    An ``A`` record; *raw* ``None`` means the file's size is *size*, a
    *save_date* ``None`` the internal date, an *email_id* ``None`` the one
    derived from *base*.
    """
    return (
        f"A\t{uid}\t{modseq}\t{size}\t{date!r}\t{coff}\t{clen}\t{_esc(base)}\t{_flags_text(flags)}"
        f"\t{size if raw is None else raw}\t{date if save_date is None else save_date!r}"
        f"\t{email_id or derived_email_id(base)}\n"
    )


def index_flags(uid: int, modseq: int, flags: Iterable[str]) -> str:
    return f"F\t{uid}\t{modseq}\t{_flags_text(flags)}\n"


def index_expunge(modseq: int, uids: Iterable[int], ids: dict[int, str] | None = None) -> str:
    """An ``X`` record: *uids* expunged at *modseq*, with their EMAILIDs from *ids* (UID -> id)."""
    uids = list(uids)
    return f"X\t{modseq}\t{','.join(map(str, uids))}{_ids_field(uids, ids)}\n"


def _ids_field(uids: list[int], ids: dict[int, str] | None) -> str:
    """The ``X`` record's EMAILID field (with its TAB) for *uids*, ``""`` when none is known."""
    if not ids:
        return ""
    found = [ids.get(uid, "") for uid in uids]
    return "\t" + ",".join(found) if any(found) else ""


#: The most ``X`` records a rewritten index keeps (:func:`compact_expunge_log`).
EXPUNGE_RECORDS = 32


def _uid_ranges(uids: Iterable[int]) -> str:
    """Ascending *uids* as ``lo:hi`` ranges and single UIDs, comma-separated."""
    parts: list[str] = []
    lo = hi = None
    for u in uids:
        if hi is not None and u == hi + 1:
            hi = u
            continue
        if lo is not None:
            parts.append(str(lo) if lo == hi else f"{lo}:{hi}")
        lo = hi = u
    if lo is not None:
        parts.append(str(lo) if lo == hi else f"{lo}:{hi}")
    return ",".join(parts)


def compact_expunge_log(
    log: list[tuple[int, tuple[int, ...]]],
    horizon: int,
    limit: int = EXPUNGE_RECORDS,
    ids: dict[int, str] | None = None,
) -> tuple[list[tuple[int, tuple[int, ...]]], str]:
    """
    Merge an expunge history (``(modseq, uids)`` ascending) into at most
    *limit* entries (consecutive entries joined, each taking the highest
    modseq of its group: a client asking from between two is told a few
    UIDs expunged just before, which RFC 7162 section 3.2.6 allows), and
    the index records for it: the horizon marker, then one ``X`` record
    per entry with UID ranges and the EMAILIDs *ids* (UID -> id) knows.
    """
    if len(log) > limit:
        merged: list[tuple[int, tuple[int, ...]]] = []
        size = -(-len(log) // limit)
        for start in range(0, len(log), size):
            group = log[start : start + size]
            uids = sorted({u for _, removed in group for u in removed})
            merged.append((group[-1][0], tuple(uids)))
        log = merged
    lines = [f"X\t{horizon}\t\n"]
    for modseq, removed in log:
        if removed:
            ordered = sorted(removed)
            lines.append(f"X\t{modseq}\t{_uid_ranges(ordered)}{_ids_field(ordered, ids)}\n")
    return log, "".join(lines)


def _parse_uids(text: str) -> list[int]:
    """``X`` record UIDs: ``u,u,lo:hi,...``."""
    out: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.partition(":")
        if sep:
            a, b = int(lo), int(hi)
            if not 0 < a <= b:
                raise ValueError("uid range")
            out.extend(range(a, b + 1))
        else:
            out.append(int(part))
    return out


def index_meta(uid: int, coff: int, clen: int) -> str:
    return f"M\t{uid}\t{coff}\t{clen}\n"


def index_recent(watermark: int) -> str:
    return f"R\t{watermark}\n"


@dataclass(slots=True)
class IndexRecord:
    """
    What the index knows of one live message.  *size* is the size served
    (CRLF line ends), *raw* the file's (``None``: not checked yet, a
    version 1 record).
    """

    uid: int
    modseq: int
    size: int
    date: float
    coff: int
    clen: int
    base: str
    flags: frozenset[str]
    raw: int | None = None
    #: When it was saved into the folder (RFC 8514); the internal date for older records.
    save_date: float = 0.0
    #: Its EMAILID (RFC 8474); derived from *base* for older records.
    email_id: str = ""


@dataclass
class ParsedIndex:
    """
    The result of replaying an index log.

    ``uidvalidity`` is ``None`` when the header is missing or unreadable.
    ``records`` holds the live messages by UID; ``lines`` counts the
    records read (for the compaction threshold); ``version`` is the
    header's.
    """

    uidvalidity: int | None = None
    version: int = INDEX_VERSION
    uidnext: int = 1
    modseq: int = 1
    recent: int = 0
    records: dict[int, IndexRecord] = field(default_factory=dict)
    damaged: bool = False
    lines: int = 0
    #: The expunge history: ``(modseq, uids)`` of each ``X`` record, in order.
    expunged: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)
    #: The history is complete after this modseq (``None``: no marker read).
    expunge_horizon: int | None = None
    #: The EMAILIDs of the UIDs expunged, where the ``X`` records name them, in record order.
    expunged_ids: dict[int, str] = field(default_factory=dict)


def _parse_flags(text: str) -> frozenset[str]:
    return frozenset(text.split()) if text else frozenset()


def parse_index(data: bytes) -> ParsedIndex:
    """
    Replay an index log.  Never raises: unreadable lines are skipped and
    mark the result damaged.
    """
    out = ParsedIndex()
    if not data:
        out.damaged = True
        return out
    text = data.decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    if lines[-1] != "":
        out.damaged = True  # torn last write
    lines.pop()
    records = out.records
    flag_sets: dict[str, frozenset[str]] = {}  # most messages share a few flag sets

    def parse_flags(text: str) -> frozenset[str]:
        found = flag_sets.get(text)
        if found is None:
            found = flag_sets[text] = _parse_flags(text)
        return found

    max_uid = 0
    max_modseq = 1
    for i, line in enumerate(lines):
        f = line.split("\t")
        try:
            kind = f[0]
            if i == 0 and kind == INDEX_MAGIC:
                version = int(f[1])
                if version not in INDEX_VERSIONS or len(f) != 6:
                    raise ValueError("index version")
                out.version = version
                uidvalidity = int(f[2])
                if not 0 < uidvalidity <= 0xFFFFFFFF:
                    raise ValueError("uidvalidity")
                out.uidvalidity = uidvalidity
                out.uidnext = int(f[3])
                max_modseq = max(max_modseq, int(f[4]))
                out.recent = int(f[5])
                continue
            if kind == "A" and len(f) in (9, 10, 12):
                uid = int(f[1])
                raw = int(f[9]) if len(f) >= 10 else None
                if uid <= 0 or (raw is not None and raw < 0):
                    raise ValueError("uid")
                base = _unesc(f[7])
                date = float(f[4])
                if len(f) == 12:
                    save_date, email_id = float(f[10]), f[11]
                    if not is_object_id(email_id):
                        raise ValueError("email id")
                else:  # versions 1 and 2
                    save_date, email_id = date, derived_email_id(base)
                rec = IndexRecord(
                    uid,
                    int(f[2]),
                    int(f[3]),
                    date,
                    int(f[5]),
                    int(f[6]),
                    base,
                    parse_flags(f[8]),
                    raw,
                    save_date,
                    email_id,
                )
                records[uid] = rec
                max_uid = max(max_uid, uid)
                max_modseq = max(max_modseq, rec.modseq)
            elif kind == "F" and len(f) == 4:
                uid, modseq = int(f[1]), int(f[2])
                flags = parse_flags(f[3])
                frec = records.get(uid)
                if frec is not None:
                    frec.flags = flags
                    frec.modseq = modseq
                max_modseq = max(max_modseq, modseq)
            elif kind == "X" and len(f) in (3, 4):
                modseq = int(f[1])
                uids = _parse_uids(f[2]) if f[2] else []
                if len(f) == 4:
                    found = f[3].split(",")
                    if len(found) != len(uids) or not all(e == "" or is_object_id(e) for e in found):
                        raise ValueError("email ids")
                    out.expunged_ids.update((u, e) for u, e in zip(uids, found, strict=True) if e)
                for uid in uids:
                    records.pop(uid, None)
                    max_uid = max(max_uid, uid)
                max_modseq = max(max_modseq, modseq)
                if uids:
                    out.expunged.append((modseq, tuple(uids)))
                elif out.expunge_horizon is None:
                    out.expunge_horizon = modseq
            elif kind == "M" and len(f) == 4:
                mrec = records.get(int(f[1]))
                if mrec is not None:
                    mrec.coff, mrec.clen = int(f[2]), int(f[3])
            elif kind == "R" and len(f) == 2:
                out.recent = max(out.recent, int(f[1]))
            else:
                raise ValueError("unknown record")
        except (ValueError, IndexError):
            out.damaged = True
            continue
        out.lines += 1
    if out.uidvalidity is None:
        out.damaged = True
    out.uidnext = max(out.uidnext, max_uid + 1, 1)
    out.modseq = max_modseq
    return out
