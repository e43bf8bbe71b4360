"""
Render a message's HTML body safely for the webmail's reading pane.

The reading pane shows an HTML body in an ``<iframe sandbox>`` (no scripts,
an opaque origin) served with its own Content-Security-Policy
(:func:`frame_policy`).  What goes into that frame is first cleaned here,
on the server, with `nh3 <https://nh3.readthedocs.io/>`_ (the Rust
``ammonia`` sanitizer): an allow-list of tags and attributes, no
``<script>``, ``<style>``, ``<form>``, ``<iframe>``, event handler
attributes or ``javascript:`` URLs.  On top of that:

* links keep ``http``, ``https`` and ``mailto`` targets only, and open in a
  new browsing context without a referrer;
* an image's source is kept only when it is inline (a ``cid:`` part of the
  message, turned into a ``data:`` URL by :func:`render_message`, or a
  ``data:image/...`` URL); a remote one (``http``, ``https``) is removed
  unless the reader asked to show images (*remote_images*), and counted;
* relative URLs are removed: they would point at the webmail's own origin;
* the ``style`` attribute keeps a list of layout and colour properties
  (:data:`STYLE_PROPERTIES`, none of which takes a URL) where nh3 can filter
  them (0.2.18 and later) and is dropped otherwise.

nh3 is an optional dependency (the ``web`` extra): without it
:data:`AVAILABLE` is false and the webmail shows the text part of a message
only.

This module is pure: no Twisted, no I/O.
"""

from __future__ import annotations

import base64
import email.policy
import inspect
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

from txmail.mime import decode_charset

try:
    import nh3
except ImportError:  # pragma: no cover - exercised where nh3 is missing
    nh3 = None  # type: ignore[assignment]  # the module, or None when the web extra is missing

__all__ = [
    "AVAILABLE",
    "STYLE_PROPERTIES",
    "Rendered",
    "frame_policy",
    "render_message",
    "sanitize_html",
]

#: Whether HTML mail can be shown (nh3 is installed).
AVAILABLE = nh3 is not None

#: The CSS properties a ``style`` attribute keeps: none of them takes a URL.
STYLE_PROPERTIES = frozenset(
    {
        "color",
        "background-color",
        "font",
        "font-family",
        "font-size",
        "font-style",
        "font-weight",
        "line-height",
        "letter-spacing",
        "text-align",
        "text-decoration",
        "text-indent",
        "text-transform",
        "vertical-align",
        "white-space",
        "word-break",
        "width",
        "max-width",
        "min-width",
        "height",
        "margin",
        "margin-top",
        "margin-right",
        "margin-bottom",
        "margin-left",
        "padding",
        "padding-top",
        "padding-right",
        "padding-bottom",
        "padding-left",
        "border",
        "border-top",
        "border-right",
        "border-bottom",
        "border-left",
        "border-color",
        "border-style",
        "border-width",
        "border-collapse",
        "border-spacing",
        "border-radius",
        "display",
    }
)

_LINK_SCHEMES = ("http:", "https:", "mailto:")
_REMOTE_SCHEMES = ("http:", "https:")
_INLINE_IMAGE_TYPES = ("data:image/png;", "data:image/gif;", "data:image/jpeg;", "data:image/webp;")

# Attributes (besides the ones nh3 allows by default) that mail layouts use
# and that cannot load anything or run anything.
_EXTRA_ATTRIBUTES = {
    "*": {"dir", "lang", "title", "align", "valign", "width", "height"},
    "table": {"border", "cellpadding", "cellspacing", "bgcolor", "width"},
    "td": {"bgcolor", "width", "nowrap"},
    "th": {"bgcolor", "width", "nowrap"},
    "tr": {"bgcolor"},
    "font": {"color", "face", "size"},
    "img": {"alt", "width", "height", "src"},
}

# Tags whose content goes too (nh3's default: script and style).
_CLEAN_CONTENT = {"script", "style", "title", "head", "noscript", "template", "textarea", "select", "object"}


def _nh3_parameters() -> frozenset[str]:
    """The keyword arguments the installed nh3's ``clean`` accepts."""
    if nh3 is None:
        return frozenset()
    try:
        return frozenset(inspect.signature(nh3.clean).parameters)
    except (TypeError, ValueError):  # pragma: no cover - a build without a signature
        return frozenset()


_FILTERS_STYLE = "filter_style_properties" in _nh3_parameters()


class _Filter:
    """nh3's ``attribute_filter``: decides on every URL, counts the remote images it drops."""

    def __init__(self, remote_images: bool, inline: dict[str, str]) -> None:
        self.remote_images = remote_images
        self.inline = inline
        self.blocked = 0

    def __call__(self, tag: str, attribute: str, value: str) -> str | None:
        if attribute == "href":
            return value if value.strip().lower().startswith(_LINK_SCHEMES) else None
        if attribute == "src":
            return self._image(value.strip())
        if attribute == "cite":
            return None
        return value

    def _image(self, value: str) -> str | None:
        lowered = value.lower()
        if lowered.startswith("cid:"):
            return self.inline.get(_content_id(value[4:]))
        if lowered.startswith(_INLINE_IMAGE_TYPES):
            return value
        if lowered.startswith(_REMOTE_SCHEMES) or lowered.startswith("//"):
            if self.remote_images and not lowered.startswith("//"):
                return value
            self.blocked += 1
        return None


def sanitize_html(
    html: str, *, remote_images: bool = False, inline: dict[str, str] | None = None
) -> tuple[str, int]:
    """
    Clean the HTML of a mail body for the reading frame.

    Args:
        html: the body, decoded.
        remote_images: keep ``http``/``https`` image sources.
        inline: content id (without angle brackets) -> ``data:`` URL of
            the message's inline parts, for ``cid:`` image sources.

    Returns:
        The cleaned HTML fragment and how many remote images were removed.

    Raises:
        RuntimeError: nh3 is not installed.
    """
    if nh3 is None:
        raise RuntimeError("HTML mail needs nh3 (pip install txmail[web])")
    attributes: dict[str, set[str]] = {tag: set(names) for tag, names in nh3.ALLOWED_ATTRIBUTES.items()}
    for tag, names in _EXTRA_ATTRIBUTES.items():
        attributes.setdefault(tag, set()).update(names)
    tags = set(nh3.ALLOWED_TAGS) | {"font", "tfoot"}
    options: dict[str, Any] = {}
    if _FILTERS_STYLE:
        attributes["*"].add("style")
        options["filter_style_properties"] = set(STYLE_PROPERTIES)
    attributes["a"].discard("target")
    check = _Filter(remote_images, inline or {})
    cleaned = nh3.clean(
        html,
        tags=tags - _CLEAN_CONTENT,
        clean_content_tags=_CLEAN_CONTENT,
        attributes=attributes,
        attribute_filter=check,
        url_schemes={"http", "https", "mailto", "data", "cid"},
        set_tag_attribute_values={"a": {"target": "_blank"}},
        link_rel="noopener noreferrer",
        **options,
    )
    return cleaned, check.blocked


def frame_policy(remote_images: bool) -> str:
    """
    The Content-Security-Policy of the reading frame: nothing loads but
    inline images (and remote ones once the reader asked), no script runs,
    and the document is sandboxed even when opened on its own.
    """
    images = "data: http: https:" if remote_images else "data:"
    return (
        "default-src 'none'; "
        f"img-src {images}; "
        # Inline style attributes only (no <style> survives the cleaning);
        # the frame runs no script, so a style cannot reach the page.
        "style-src 'unsafe-inline'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'self'; "
        "sandbox allow-popups allow-popups-to-escape-sandbox"
    )


@dataclass(frozen=True, slots=True)
class Rendered:
    """
    What the reading frame shows of a message.

    Attributes:
        html: a complete HTML document (cleaned), or ``None`` when the
            message has no HTML body.
        blocked: how many remote images were removed.
    """

    html: str | None
    blocked: int = 0


_MAX_INLINE = 5_000_000


def _content_id(value: str) -> str:
    return value.strip().strip("<>").strip()


def _payload(part: Any) -> bytes:
    """The decoded octets of a leaf part (``b""`` for a multipart or an undecodable one)."""
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def _text(part: Any) -> str:
    payload = _payload(part)
    return decode_charset(payload, part.get_content_charset() or "utf-8")


def _inline_images(message: EmailMessage) -> dict[str, str]:
    """content id -> ``data:`` URL of the message's image parts that have one."""
    found: dict[str, str] = {}
    total = 0
    for part in message.walk():
        cid = part.get("Content-ID")
        if not cid or part.get_content_maintype() != "image":
            continue
        ctype = part.get_content_type()
        if f"data:{ctype};" not in _INLINE_IMAGE_TYPES:
            continue
        data = _payload(part)
        total += len(data)
        if total > _MAX_INLINE:
            break
        found[_content_id(str(cid))] = f"data:{ctype};base64,{base64.b64encode(data).decode('ascii')}"
    return found


_DOCUMENT = (
    '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
    '<meta name="referrer" content="no-referrer">'
    "<style>body{{font-family:sans-serif;margin:8px;overflow-wrap:anywhere}}img{{max-width:100%;height:auto}}</style>"
    "</head><body>{body}</body></html>\n"
)


def render_message(raw: bytes, *, remote_images: bool = False) -> Rendered:
    """
    The cleaned HTML document of the HTML body of the message *raw* (its
    first ``text/html`` part, the one a ``multipart/alternative`` prefers),
    its ``cid:`` images inlined.

    Raises:
        RuntimeError: nh3 is not installed.
    """
    message = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    try:
        body = message.get_body(preferencelist=("html",))
    except Exception:  # a malformed structure: no HTML to show
        body = None
    if body is None or body.get_content_type() != "text/html":
        return Rendered(None)
    cleaned, blocked = sanitize_html(_text(body), remote_images=remote_images, inline=_inline_images(message))
    return Rendered(_DOCUMENT.format(body=cleaned), blocked)
