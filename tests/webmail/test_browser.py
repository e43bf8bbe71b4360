"""
The webmail in headless Chromium against a real server: mail delivered over
SMTP, read, answered, moved and searched in the page, checked over IMAP.
"""

from __future__ import annotations

import base64
import os
import smtplib
import time
from typing import Any

from twisted.internet import defer, threads
from twisted.web import resource, server

from tests.webmail._browser import ALICE, BOB, CAROL, BrowserTestCase, screenshots

try:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
except ImportError:  # pragma: no cover - the tests skip
    pass


class Recorder(resource.Resource):
    """A tiny HTTP server's root: remembers every path asked for and answers a 1x1 GIF."""

    isLeaf = True
    GIF = bytes.fromhex(
        "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
    )

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[bytes] = []

    def render_GET(self, request: Any) -> bytes:
        self.requests.append(request.uri)
        request.setHeader(b"content-type", b"image/gif")
        return self.GIF


class SessionTests(BrowserTestCase):
    @screenshots
    async def test_login_read_logout(self) -> None:
        """Log in; a message delivered over SMTP is listed unread, reads as text, and the unread count goes."""
        await self.deliver("Lunch on Friday?", "Shall we meet at noon?\n<b>not bold</b>")
        await self.login()
        self.assertEqual(await self.text("user-name"), ALICE)
        count = await self.wait(
            lambda d: d.find_element(By.CSS_SELECTOR, '#folder-list li[data-role="inbox"] .count').text,
            what="the unread count",
        )
        self.assertEqual(count, "1")
        item = await self.wait(
            lambda d: d.find_element(By.CSS_SELECTOR, "#message-list li.unread").text, what="unread"
        )
        self.assertIn("Bob", item)
        await self.open_message("Lunch on Friday?")
        body = await self.text("message-text")
        # The text part is shown as text: its markup is not markup.
        self.assertEqual(body, "Shall we meet at noon?\n<b>not bold</b>")
        self.assertIn("bob@example.test", await self.text("reader-from"))
        await self.wait(
            lambda d: not d.find_elements(By.CSS_SELECTOR, '#folder-list li[data-role="inbox"] .count'),
            what="the unread count to go",
        )
        # The session cookie: HttpOnly and SameSite=Strict, not readable by the page.
        [cookie] = await self.browser(self.driver.get_cookies)
        self.assertEqual(
            (cookie["name"], cookie["httpOnly"], cookie["sameSite"]), ("txmail_session", True, "Strict")
        )
        self.assertEqual(await self.browser(self.driver.execute_script, "return document.cookie"), "")
        await self.click("logout-button")
        await self.element("login-form")
        await self.browser(self.driver.refresh)
        await self.element("login-form")
        # The page ran under its Content-Security-Policy without a violation
        # or a script error (the one expected failure: "not logged in").
        logged = await self.browser(self.driver.get_log, "browser")
        problems = [
            entry["message"]
            for entry in logged
            if entry["level"] == "SEVERE"
            and "/webmail/session - Failed to load resource" not in entry["message"]
        ]
        self.assertEqual(problems, [])

    @screenshots
    async def test_phone_layout(self) -> None:
        """On a narrow screen one pane shows at a time: list, message, back to the list, folders."""
        await self.deliver("Small screen")
        await self.browser(self.driver.set_window_size, 400, 800)
        self.addCleanup(lambda: self.browser(self.driver.set_window_size, 1280, 900))
        await self.login()

        def shown(driver: Any) -> dict[str, bool]:
            panes = ("folder-pane", "list-pane", "reader-pane")
            return {pane: driver.find_element(By.ID, pane).is_displayed() for pane in panes}

        await self.wait_for_subject("Small screen")
        self.assertEqual(
            await self.browser(shown, self.driver),
            {"folder-pane": False, "list-pane": True, "reader-pane": False},
        )
        await self.open_message("Small screen")
        self.assertEqual(
            await self.browser(shown, self.driver),
            {"folder-pane": False, "list-pane": False, "reader-pane": True},
        )
        width = await self.browser(self.driver.execute_script, "return document.documentElement.scrollWidth")
        self.assertLessEqual(width, 400)
        await self.click("nav-back")
        await self.wait(lambda d: d.find_element(By.ID, "list-pane").is_displayed(), what="the list again")
        await self.click("nav-folders")
        await self.wait(lambda d: d.find_element(By.ID, "folder-pane").is_displayed(), what="the folders")
        self.assertFalse(
            await self.browser(lambda: self.driver.find_element(By.ID, "list-pane").is_displayed())
        )

    @screenshots
    async def test_wrong_password(self) -> None:
        await self.browser(self.driver.get, self.base + "/")
        await self.type("login-user", ALICE)
        await self.type("login-password", "wrong")
        await self.click("login-submit")
        await self.wait(
            lambda d: d.find_element(By.ID, "login-error").text, timeout=15, what="the login error"
        )
        self.assertEqual(await self.text("login-error"), "Wrong address or password")


class MailTests(BrowserTestCase):
    @screenshots
    async def test_reply_seen_over_imap(self) -> None:
        """Alice replies to Bob in the page; Bob sees the reply, threaded, over IMAP."""
        await self.deliver("Quarterly figures", "Can you check the numbers?")
        await self.login()
        await self.open_message("Quarterly figures")
        await self.click("reply")
        await self.element("compose-body")
        self.assertEqual(
            await self.browser(lambda: self.driver.find_element(By.ID, "compose-to").get_attribute("value")),
            f"Bob <{BOB}>",
        )
        self.assertEqual(
            await self.browser(
                lambda: self.driver.find_element(By.ID, "compose-subject").get_attribute("value")
            ),
            "Re: Quarterly figures",
        )
        await self.browser(lambda: self.driver.find_element(By.ID, "compose-body").send_keys("They add up."))
        await self.click("compose-send")
        await self.server.wait_for_messages(BOB, 1, timeout=10)
        [reply] = await self.imap_messages(BOB)
        self.assertEqual(reply["Subject"], "Re: Quarterly figures")
        self.assertEqual(reply["From"].addresses[0].addr_spec, ALICE)
        self.assertEqual(
            str(reply["In-Reply-To"]).strip(), f"<{abs(hash('Quarterly figures'))}@example.test>"
        )
        text = reply.get_body(preferencelist=("plain",)).get_content()
        self.assertIn("They add up.", text)
        self.assertIn("wrote:\n> Can you check the numbers?", text.replace("\r\n", "\n"))
        # Alice keeps a copy in Sent.
        [sent] = await self.imap_messages(ALICE, "Sent")
        self.assertEqual(sent["Subject"], "Re: Quarterly figures")

    @screenshots
    async def test_reply_all(self) -> None:
        """Reply to all: the sender in To, the other recipients in Cc, never the user herself."""
        message = (
            f"From: Bob <{BOB}>\r\nTo: <{ALICE}>, Carol <{CAROL}>\r\nSubject: Team lunch\r\n"
            "Message-ID: <lunch@example.test>\r\n\r\nWho is in?\r\n"
        ).encode()
        await self.smtp_send(BOB, [ALICE, CAROL], message)
        await self.login()
        await self.open_message("Team lunch")
        await self.click("reply-all")
        await self.element("compose-body")
        fields = await self.browser(
            lambda: [
                self.driver.find_element(By.ID, f).get_attribute("value")
                for f in ("compose-to", "compose-cc")
            ]
        )
        self.assertEqual(fields, [f"Bob <{BOB}>", f"Carol <{CAROL}>"])
        await self.browser(lambda: self.driver.find_element(By.ID, "compose-body").send_keys("Me!"))
        await self.click("compose-send")
        await self.server.wait_for_messages(BOB, 1, timeout=10)
        await self.server.wait_for_messages(CAROL, 2, timeout=10)
        [to_bob] = await self.imap_messages(BOB)
        self.assertEqual(to_bob["Subject"], "Re: Team lunch")
        self.assertEqual([a.addr_spec for a in to_bob["Cc"].addresses], [CAROL])
        self.assertEqual(
            [m["Subject"] for m in await self.imap_messages(CAROL)], ["Team lunch", "Re: Team lunch"]
        )
        self.assertEqual(len(await self.imap_messages(ALICE)), 1)

    @screenshots
    async def test_forward_with_attachments(self) -> None:
        """Forward keeps the original's attachment and adds an uploaded file; Carol gets both over IMAP."""
        message = (
            f"From: Bob <{BOB}>\r\nTo: {ALICE}\r\nSubject: The report\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=m\r\n\r\n"
            "--m\r\nContent-Type: text/plain\r\n\r\nThe report is attached.\r\n"
            "--m\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=report.pdf\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKJcOkw7zDtsOfCg==\r\n--m--\r\n"
        ).encode()
        await self.smtp_send(BOB, [ALICE], message)
        upload = os.path.abspath(self.mktemp())
        with open(upload, "wb") as f:
            f.write(b"notes from alice\n")
        await self.login()
        await self.open_message("The report")
        self.assertIn("report.pdf", await self.text("attachments"))
        # The link downloads it from the JMAP download endpoint (with the cookie).
        link = await self.browser(
            lambda: self.driver.find_element(By.CSS_SELECTOR, "#attachments a").get_attribute("href")
        )
        self.assertTrue(link.startswith(self.base + "/jmap/download/"), link)
        downloaded = await self.browser(
            self.driver.execute_async_script,
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0]).then(r => r.arrayBuffer()).then(b => done(Array.from(new Uint8Array(b))));",
            link,
        )
        self.assertEqual(bytes(downloaded), base64.b64decode("JVBERi0xLjQKJcOkw7zDtsOfCg=="))
        await self.click("forward")
        await self.wait(
            lambda d: "report.pdf" in d.find_element(By.ID, "compose-attachments").text, what="the attachment"
        )
        await self.type("compose-to", CAROL)
        await self.browser(lambda: self.driver.find_element(By.ID, "compose-files").send_keys(upload))
        name = os.path.basename(upload)
        await self.wait(
            lambda d: name in d.find_element(By.ID, "compose-attachments").text, what="the upload"
        )
        await self.click("compose-send")
        await self.server.wait_for_messages(CAROL, 1, timeout=10)
        [forwarded] = await self.imap_messages(CAROL)
        self.assertEqual(forwarded["Subject"], "Fwd: The report")
        attachments = {part.get_filename(): part.get_content() for part in forwarded.iter_attachments()}
        self.assertEqual(attachments["report.pdf"], base64.b64decode("JVBERi0xLjQKJcOkw7zDtsOfCg=="))
        self.assertEqual(attachments[name], b"notes from alice\n")
        self.assertIn("The report is attached.", forwarded.get_body(preferencelist=("plain",)).get_content())

    @screenshots
    async def test_draft_saved_then_sent(self) -> None:
        await self.login()
        await self.click("compose-button")
        await self.type("compose-to", CAROL)
        await self.type("compose-subject", "Plan for Monday")
        await self.type("compose-body", "First draft")
        await self.click("compose-save")
        await self.wait(
            lambda d: d.find_element(By.ID, "compose-status").text == "Draft saved", what="Draft saved"
        )
        [draft] = await self.imap_messages(ALICE, "Drafts")
        self.assertEqual(draft["Subject"], "Plan for Monday")
        self.assertIn("\\Draft", await self.imap_flags(ALICE, "Plan for Monday", "Drafts"))
        await self.click("compose-discard")
        await self.open_folder("Drafts")
        await self.wait_for_subject("Plan for Monday")

        def open_draft(driver: Any) -> bool:
            driver.find_element(By.CSS_SELECTOR, "#message-list li button").click()
            return True

        await self.wait(open_draft, what="the draft to open")
        await self.wait(
            lambda d: d.find_element(By.ID, "compose-subject").get_attribute("value") == "Plan for Monday",
            what="the draft in the composer",
        )
        await self.browser(lambda: self.driver.find_element(By.ID, "compose-body").send_keys(" and final"))
        await self.click("compose-send")
        [sent] = await self.server.wait_for_messages(CAROL, 1, timeout=10)
        self.assertIn(b"First draft and final", sent)
        await self.wait(
            lambda d: not d.find_elements(By.CSS_SELECTOR, "#message-list li"), what="no drafts left"
        )
        self.assertEqual(await self.imap_messages(ALICE, "Drafts"), [])

    @screenshots
    async def test_move_to_folder(self) -> None:
        await self.imap(ALICE, lambda c: c.create("Projects"))
        await self.deliver("Plans for 2027")
        await self.deliver("Keep me here")
        await self.login()
        await self.open_message("Plans for 2027")

        def move(driver: Any) -> bool:
            Select(driver.find_element(By.ID, "move-to")).select_by_visible_text("Projects")
            return True

        await self.wait(move, what="Move to Projects")
        await self.wait(
            lambda d: (
                "Plans for 2027"
                not in [e.text for e in d.find_elements(By.CSS_SELECTOR, "#message-list .subject")]
            ),
            what="the message to leave the list",
        )
        self.assertEqual(await self.list_subjects(), ["Keep me here"])
        [moved] = await self.imap_messages(ALICE, "Projects")
        self.assertEqual(moved["Subject"], "Plans for 2027")
        self.assertEqual([m["Subject"] for m in await self.imap_messages(ALICE)], ["Keep me here"])
        # The folder shows it.
        await self.open_folder("Projects")
        await self.wait_for_subject("Plans for 2027")

    @screenshots
    async def test_flag_unread_delete(self) -> None:
        """Flag, mark unread, delete to Trash and then for good; IMAP sees each step."""
        await self.deliver("Keep an eye on this")
        await self.deliver("Spam offer")
        await self.login()
        await self.open_message("Keep an eye on this")
        await self.click("flag")
        await self.wait(lambda d: d.find_element(By.ID, "flag").text == "Unflag", what="Unflag")
        self.assertEqual(await self.imap_flags(ALICE, "Keep an eye on this"), {"\\Flagged", "\\Seen"})
        await self.click("mark-unread")
        await self.wait(
            lambda d: d.find_element(By.CSS_SELECTOR, "#message-list li.unread .flag"),
            what="flagged and unread",
        )
        self.assertEqual(await self.imap_flags(ALICE, "Keep an eye on this"), {"\\Flagged"})
        await self.open_message("Spam offer")
        await self.click("delete")
        await self.wait(
            lambda d: (
                "Spam offer"
                not in [e.text for e in d.find_elements(By.CSS_SELECTOR, "#message-list .subject")]
            ),
            what="the message to leave the list",
        )
        self.assertEqual([m["Subject"] for m in await self.imap_messages(ALICE, "Trash")], ["Spam offer"])
        self.assertEqual([m["Subject"] for m in await self.imap_messages(ALICE)], ["Keep an eye on this"])
        await self.open_folder("Trash")
        await self.open_message("Spam offer")
        await self.click("delete")
        await self.wait(
            lambda d: not d.find_elements(By.CSS_SELECTOR, "#message-list li"), what="an empty Trash"
        )
        self.assertEqual(await self.imap_messages(ALICE, "Trash"), [])

    @screenshots
    async def test_threads_and_pages(self) -> None:
        """A conversation is one line with its count; fifty lines a page, newest first."""

        def send_many() -> None:
            with smtplib.SMTP(*self.server.smtp_address, timeout=10) as client:
                for i in range(50):
                    message = f"From: <{BOB}>\r\nTo: <{ALICE}>\r\nSubject: Note {i:02}\r\n\r\nnote\r\n"
                    client.sendmail(BOB, [ALICE], message.encode())
                client.sendmail(
                    BOB,
                    [ALICE],
                    (
                        f"From: <{BOB}>\r\nTo: <{ALICE}>\r\nSubject: Topic\r\nMessage-ID: <topic@example.test>\r\n\r\nfirst\r\n"
                    ).encode(),
                )
                client.sendmail(
                    CAROL,
                    [ALICE],
                    (
                        f"From: <{CAROL}>\r\nTo: <{ALICE}>\r\nSubject: Re: Topic\r\nMessage-ID: <re@example.test>\r\n"
                        "In-Reply-To: <topic@example.test>\r\nReferences: <topic@example.test>\r\n\r\nsecond\r\n"
                    ).encode(),
                )

        await threads.deferToThread(send_many)
        await self.login()
        await self.wait(
            lambda d: d.find_element(By.ID, "page-info").text == "1\u201350 of 51", what="the first page"
        )
        subjects = await self.list_subjects()
        self.assertEqual(len(subjects), 50)
        self.assertEqual(subjects[:3], ["Re: Topic", "Note 49", "Note 48"])
        count = await self.wait(
            lambda d: d.find_element(By.CSS_SELECTOR, "#message-list li .thread-count").text,
            what="a thread count",
        )
        self.assertEqual(count, "(2)")
        await self.open_message("Re: Topic")
        await self.element("thread-list")
        self.assertIn("Conversation (2)", await self.text("thread-list"))
        await self.click("next-page")
        await self.wait(
            lambda d: d.find_element(By.ID, "page-info").text == "51\u201351 of 51", what="the second page"
        )
        self.assertEqual(await self.list_subjects(), ["Note 00"])
        await self.click("prev-page")
        await self.wait_for_subject("Note 49")

    @screenshots
    async def test_search(self) -> None:
        await self.deliver("Invoice 1042", "Amount due: 300 EUR for the pelican statue")
        await self.deliver("Holiday pictures", "See the attached beach photos")
        await self.deliver("Re: the pelican", "Where do we put it?")
        await self.login()
        await self.wait_for_subject("Holiday pictures")
        await self.type("search-input", "pelican\n")
        await self.wait(
            lambda d: d.find_element(By.ID, "list-title").text == "Search: pelican", what="search results"
        )
        await self.wait(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "#message-list li")) == 2, what="two results"
        )
        self.assertEqual(sorted(await self.list_subjects()), ["Invoice 1042", "Re: the pelican"])

    @screenshots
    async def test_new_message_appears_live(self) -> None:
        """A message delivered while the page is open is listed without a reload (EventSource push)."""
        await self.deliver("First")
        await self.login()
        await self.wait_for_subject("First")
        listing = await self.browser(lambda: self.driver.find_element(By.ID, "message-list"))
        await self.deliver("Second, pushed", to=ALICE, sender=CAROL)
        await self.wait_for_subject("Second, pushed", timeout=15)
        # The same list element: the page was not loaded again.
        self.assertEqual(await self.browser(lambda: listing.get_attribute("id")), "message-list")
        self.assertEqual(await self.list_subjects(), ["Second, pushed", "First"])


class _RecorderSite(server.Site):
    """The recorder's site: closes the connections it still has when the test ends."""

    def __init__(self, root: Recorder) -> None:
        super().__init__(root)
        self.channels: list[tuple[Any, defer.Deferred[None]]] = []

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        lost: defer.Deferred[None] = defer.Deferred()
        closed = protocol.connectionLost

        def connectionLost(reason: Any) -> None:
            closed(reason)
            lost.callback(None)

        protocol.connectionLost = connectionLost
        self.channels.append((protocol, lost))
        return protocol

    def close(self) -> defer.Deferred[Any]:
        for protocol, lost in self.channels:
            if not lost.called:
                protocol._channel.transport.abortConnection()
        return defer.gatherResults([lost for _, lost in self.channels])


class HtmlMailTests(BrowserTestCase):
    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        from twisted.internet import reactor

        self.recorder = Recorder()
        site = _RecorderSite(self.recorder)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(site.close)
        self.addCleanup(port.stopListening)
        self.image = f"http://127.0.0.1:{port.getHost().port}/tracker.gif"

    @screenshots
    async def test_script_never_runs_remote_image_never_loads(self) -> None:
        # Every script would tell the recorder (a beacon works from any
        # origin) and try to change the page's title and globals.
        beacon = self.image.replace("tracker.gif", "script-ran")
        run = f"new Image().src='{beacon}';parent.document.title='owned';window.owned=1"
        html = (
            f"<html><head><title>t</title><script>{run}</script></head>"
            f'<body onload="{run}"><p id="greeting">Hello <b>Alice</b></p>'
            f'<img src="{self.image}" alt="tracker">'
            f'<img src="x" onerror="{run}">'
            f'<a href="javascript:{run}">click</a>'
            f"<script>{run}</script></body></html>"
        )
        message = (
            f"From: Bob <{BOB}>\r\nTo: {ALICE}\r\nSubject: Newsletter\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/alternative; boundary=x\r\n\r\n"
            "--x\r\nContent-Type: text/plain\r\n\r\nHello Alice (text)\r\n"
            f"--x\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n--x--\r\n"
        ).encode()
        await self.smtp_send(BOB, [ALICE], message)
        await self.login()
        title = await self.browser(lambda: self.driver.title)
        await self.open_message("Newsletter")
        sandbox = await self.wait(
            lambda d: d.find_element(By.ID, "message-frame").get_attribute("sandbox"), what="the frame"
        )
        self.assertEqual(sandbox, "allow-popups allow-popups-to-escape-sandbox")

        def enter(driver: Any) -> bool:
            driver.switch_to.frame(driver.find_element(By.ID, "message-frame"))
            return True

        await self.wait(enter, what="the frame to enter")
        try:
            greeting = await self.wait(lambda d: d.find_element(By.TAG_NAME, "p"), what="the HTML body")
            self.assertEqual(await self.browser(lambda: greeting.text), "Hello Alice")
            self.assertEqual(
                await self.browser(lambda: len(self.driver.find_elements(By.TAG_NAME, "script"))), 0
            )
            sources = await self.browser(
                lambda: [i.get_attribute("src") for i in self.driver.find_elements(By.TAG_NAME, "img")]
            )
            self.assertEqual(sources, [None, None])
        finally:
            await self.browser(self.driver.switch_to.default_content)
        await self.sleep(1.0)
        self.assertEqual(await self.browser(lambda: self.driver.title), title)
        self.assertEqual(
            await self.browser(self.driver.execute_script, "return window.owned === undefined"), True
        )
        self.assertEqual(self.recorder.requests, [])
        # The reader's click shows it: the recorder would have seen a request.
        await self.click("show-images")
        deadline = time.monotonic() + 10
        while not self.recorder.requests and time.monotonic() < deadline:
            await self.sleep(0.1)
        self.assertEqual(self.recorder.requests, [b"/tracker.gif"])
        self.assertEqual(await self.browser(lambda: self.driver.title), title)

    @screenshots
    async def test_without_nh3_text_part_only(self) -> None:
        """Without the sanitizer the page shows the text part, as text, and no frame."""
        from txmail.webmail import sanitize

        self.patch(sanitize, "AVAILABLE", False)
        message = (
            f"From: Bob <{BOB}>\r\nTo: {ALICE}\r\nSubject: Two parts\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/alternative; boundary=x\r\n\r\n"
            "--x\r\nContent-Type: text/plain\r\n\r\nThe text part\r\n"
            f'--x\r\nContent-Type: text/html\r\n\r\n<p>The HTML part</p><img src="{self.image}">\r\n--x--\r\n'
        ).encode()
        await self.smtp_send(BOB, [ALICE], message)
        await self.login()
        await self.open_message("Two parts")
        self.assertEqual(await self.text("message-text"), "The text part")
        self.assertEqual(await self.browser(lambda: self.driver.find_elements(By.ID, "message-frame")), [])
        self.assertEqual(self.recorder.requests, [])
