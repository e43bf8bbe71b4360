"""The cleaning of HTML mail for the reading frame (txmail.webmail.sanitize)."""

from __future__ import annotations

import re

from twisted.trial.unittest import SynchronousTestCase

from txmail.webmail import sanitize

REMOTE = "http://127.0.0.1:9/pixel.png"


def _message(
    html: str, *, text: str | None = "plain", extra_parts: str = "", charset: str = "utf-8"
) -> bytes:
    parts = []
    if text is not None:
        parts.append(f"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n")
    parts.append(f"--b\r\nContent-Type: text/html; charset={charset}\r\n\r\n{html}\r\n")
    return (
        "From: a@example.test\r\nTo: b@example.test\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/alternative; boundary=b\r\n\r\n" + "".join(parts) + extra_parts + "--b--\r\n"
    ).encode(charset if charset != "utf-8" else "utf-8")


class SanitizeTests(SynchronousTestCase):
    def setUp(self) -> None:
        if not sanitize.AVAILABLE:
            raise self.skipTest("nh3 is not installed")

    def test_scripts_and_handlers_removed(self) -> None:
        html, _ = sanitize.sanitize_html(
            '<p onclick="steal()">hi<script>document.title="owned"</script></p>'
            '<img src="x" onerror="steal()"><iframe src="https://evil.test/"></iframe>'
            '<form action="https://evil.test/"><input name="p"></form><svg onload="steal()"></svg>'
        )
        self.assertIn("<p>hi</p>", html)
        for bad in (
            "script",
            "owned",
            "onclick",
            "onerror",
            "onload",
            "iframe",
            "form",
            "input",
            "svg",
            "steal",
        ):
            self.assertNotIn(bad, html)

    def test_dangerous_links_removed(self) -> None:
        html, _ = sanitize.sanitize_html(
            '<a href="javascript:alert(1)">j</a><a href="data:text/html,x">d</a>'
            '<a href="/webmail/logout">r</a><a href="https://example.test/">ok</a><a href="mailto:x@y.test">m</a>'
        )
        self.assertNotIn("javascript", html)
        self.assertNotIn("data:", html)
        self.assertNotIn("/webmail/logout", html)
        self.assertIn('href="https://example.test/"', html)
        self.assertIn('href="mailto:x@y.test"', html)
        # Links open outside the frame, without a referrer or an opener.
        self.assertEqual(html.count('target="_blank"'), 5)
        self.assertEqual(html.count('rel="noopener noreferrer"'), 5)

    def test_remote_images_blocked_and_counted(self) -> None:
        html, blocked = sanitize.sanitize_html(
            f'<img src="{REMOTE}" alt="a"><img src="https://127.0.0.1:9/b.png"><img src="//127.0.0.1:9/c.png">'
        )
        self.assertEqual(blocked, 3)
        self.assertNotIn("127.0.0.1", html)
        self.assertIn('alt="a"', html)

    def test_remote_images_when_asked(self) -> None:
        html, blocked = sanitize.sanitize_html(
            f'<img src="{REMOTE}"><img src="//127.0.0.1:9/c.png">', remote_images=True
        )
        self.assertEqual(blocked, 1)  # a scheme-relative source never loads
        self.assertIn(f'src="{REMOTE}"', html)
        self.assertNotIn("c.png", html)

    def test_inline_images(self) -> None:
        html, blocked = sanitize.sanitize_html(
            '<img src="cid:logo@x"><img src="cid:unknown@x"><img src="data:image/png;base64,AAAA">'
            '<img src="data:image/svg+xml;base64,AAAA">',
            inline={"logo@x": "data:image/gif;base64,R0lG"},
        )
        self.assertEqual(blocked, 0)
        self.assertIn('src="data:image/gif;base64,R0lG"', html)
        self.assertIn('src="data:image/png;base64,AAAA"', html)
        self.assertNotIn("svg", html)
        self.assertNotIn("cid:", html)

    def test_style_without_urls(self) -> None:
        html, _ = sanitize.sanitize_html(
            f'<p style="color: red; background-image: url({REMOTE}); background: url({REMOTE})">x</p>'
            f"<style>p {{ background: url({REMOTE}) }}</style>"
        )
        self.assertNotIn("url(", html)
        self.assertNotIn("127.0.0.1", html)
        if sanitize._FILTERS_STYLE:
            self.assertIn("color:red", html.replace(" ", ""))

    def test_render_message_prefers_html_part(self) -> None:
        rendered = sanitize.render_message(_message("<b>caf\u00e9</b><script>x()</script>"))
        assert rendered.html is not None
        self.assertTrue(rendered.html.startswith("<!DOCTYPE html>"))
        self.assertIn("<b>caf\u00e9</b>", rendered.html)
        self.assertNotIn("<script>x", rendered.html)
        self.assertEqual(rendered.blocked, 0)

    def test_render_message_charset(self) -> None:
        rendered = sanitize.render_message(_message("<p>caf\u00e9</p>", text=None, charset="iso-8859-1"))
        assert rendered.html is not None
        self.assertIn("<p>caf\u00e9</p>", rendered.html)

    def test_render_message_hostile_charsets(self) -> None:
        """A charset no text codec decodes with replacement (idna), or one giving lone surrogates (utf-7), still renders."""
        for charset, body, shown in (("idna", "xn--\u00ff-", "xn--"), ("utf-7", "a +2AA- b", "a \ufffd b")):
            raw = _message(f"<p>{body}</p>", text=None).replace(
                b"charset=utf-8", b"charset=" + charset.encode()
            )
            rendered = sanitize.render_message(raw)
            assert rendered.html is not None
            self.assertIn(shown, rendered.html)
            rendered.html.encode("utf-8")  # no lone surrogate

    def test_render_message_blocks_remote_images(self) -> None:
        raw = _message(f'<p>hi</p><img src="{REMOTE}">')
        blocked = sanitize.render_message(raw)
        assert blocked.html is not None
        self.assertEqual(blocked.blocked, 1)
        self.assertNotIn(REMOTE, blocked.html)
        shown = sanitize.render_message(raw, remote_images=True)
        assert shown.html is not None
        self.assertIn(REMOTE, shown.html)

    def test_render_message_inlines_cid_images(self) -> None:
        related = (
            b"From: a@example.test\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/related; boundary=r\r\n\r\n"
            b'--r\r\nContent-Type: text/html\r\n\r\n<img src="cid:pic@x">\r\n'
            b"--r\r\nContent-Type: image/png\r\nContent-ID: <pic@x>\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            b"iVBORw0KGgo=\r\n--r--\r\n"
        )
        rendered = sanitize.render_message(related)
        assert rendered.html is not None
        self.assertIn('src="data:image/png;base64,iVBORw0KGgo="', rendered.html)

    def test_render_message_without_html(self) -> None:
        raw = b"From: a@example.test\r\nSubject: s\r\nContent-Type: text/plain\r\n\r\n<b>not html</b>\r\n"
        self.assertIsNone(sanitize.render_message(raw).html)

    def test_render_message_broken_input(self) -> None:
        for raw in (b"", b"\xff\xfe garbage", b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n"):
            self.assertIsNone(sanitize.render_message(raw).html)


class FramePolicyTests(SynchronousTestCase):
    def directives(self, policy: str) -> dict[str, str]:
        return {d.split()[0]: " ".join(d.split()[1:]) for d in (p.strip() for p in policy.split(";")) if d}

    def test_blocked(self) -> None:
        policy = self.directives(sanitize.frame_policy(False))
        self.assertEqual(policy["default-src"], "'none'")
        self.assertEqual(policy["img-src"], "data:")
        self.assertNotIn("script-src", policy)
        self.assertNotIn("allow-scripts", policy["sandbox"])
        self.assertNotIn("allow-same-origin", policy["sandbox"])

    def test_images_shown(self) -> None:
        policy = self.directives(sanitize.frame_policy(True))
        self.assertEqual(policy["img-src"], "data: http: https:")
        self.assertEqual(policy["default-src"], "'none'")
        self.assertFalse(re.search("unsafe-eval", sanitize.frame_policy(True)))
