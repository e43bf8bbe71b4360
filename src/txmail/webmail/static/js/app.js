// The webmail: log in, then folders, the message list, the reader and the
// composer, over JMAP.  Everything shown of a message goes in as text
// (dom.js); an HTML body is shown only in a sandboxed frame whose document
// the server sanitized (/webmail/render).

import { $, fill, formatAddresses, formatDate, formatSize, h, shortName, toast } from "./dom.js";
import { Client } from "./jmap.js";
import { Mail, bodyText, hasHtml } from "./mail.js";
import { Composer } from "./compose.js";

const PAGE_SIZE = 50;

const state = {
  client: null,
  mail: null,
  config: null,        // {username, csrfToken, html}
  mailboxId: null,     // the folder shown, or null while searching
  search: "",
  position: 0,
  total: 0,
  current: null,       // the email shown in the reader
  source: null,        // the EventSource
  composer: null,
};

/** Show one pane on a phone (body[data-view]); on a wide screen all show. */
function view(name) {
  document.body.dataset.view = name;
}

// -- login ---------------------------------------------------------------

async function postJson(url, body, csrfToken) {
  const headers = { "Content-Type": "application/json" };
  if (csrfToken) headers["X-CSRF-Token"] = csrfToken;
  return fetch(url, {
    method: "POST", headers, body: JSON.stringify(body || {}),
    credentials: "same-origin", cache: "no-store",
  });
}

function showLogin(message) {
  if (state.source) state.source.close();
  state.source = null;
  $("mail-view").hidden = true;
  $("login-view").hidden = false;
  view("login");
  $("login-error").textContent = message || "";
  $("login-password").value = "";
  $("login-user").focus();
}

async function login(event) {
  event.preventDefault();
  $("login-error").textContent = "";
  $("login-submit").disabled = true;
  try {
    const response = await postJson("/webmail/login", {
      username: $("login-user").value, password: $("login-password").value,
    });
    if (!response.ok) {
      showLogin(response.status === 401 ? "Wrong address or password" : `Login failed (HTTP ${response.status})`);
      return;
    }
    await start(await response.json());
  } catch (e) {
    showLogin(`Login failed: ${e.message}`);
  } finally {
    $("login-submit").disabled = false;
  }
}

async function logout() {
  try {
    await postJson("/webmail/logout", {}, state.config && state.config.csrfToken);
  } finally {
    state.config = null;
    showLogin("You are logged out");
  }
}

// -- start ------------------------------------------------------------------

async function start(config) {
  state.config = config;
  state.client = new Client(config.csrfToken, config.expiresIn);
  state.client.onUnauthorized = () => showLogin("Your session has expired: please log in again");
  state.mail = new Mail(state.client);
  await state.client.connect();
  await Promise.all([state.mail.loadMailboxes(), state.mail.loadIdentities()]);
  await state.mail.ensureMailboxes();
  state.composer = new Composer(state.mail, { onClose: closeComposer, onSent: refresh });
  $("login-view").hidden = true;
  $("mail-view").hidden = false;
  $("user-name").textContent = state.client.username;
  const inbox = state.mail.byRole("inbox") || state.mail.mailboxes[0];
  await openMailbox(inbox ? inbox.id : null);
  view("list");
  state.source = state.client.listen(onPush);
}

// -- folders --------------------------------------------------------------

const ROLE_ORDER = ["inbox", "drafts", "sent", "archive", "junk", "trash"];

function sortedMailboxes() {
  const rank = (m) => {
    const i = ROLE_ORDER.indexOf(m.role);
    return i < 0 ? ROLE_ORDER.length : i;
  };
  return [...state.mail.mailboxes].sort((a, b) =>
    rank(a) - rank(b) || (a.sortOrder || 0) - (b.sortOrder || 0) || a.name.localeCompare(b.name));
}

function renderFolders() {
  const items = sortedMailboxes().map((m) => h("li",
    { class: m.id === state.mailboxId ? "current" : null, dataset: { mailboxId: m.id, role: m.role || "" } },
    h("button", { type: "button", onclick: () => openMailbox(m.id).then(() => view("list")) },
      h("span", { class: "name" }, m.name),
      m.unreadEmails ? h("span", { class: "count", title: "unread" }, String(m.unreadEmails)) : null)));
  fill($("folder-list"), items);
}

async function openMailbox(mailboxId) {
  state.mailboxId = mailboxId;
  state.search = "";
  state.position = 0;
  $("search-input").value = "";
  renderFolders();
  await loadList();
}

// -- the message list -----------------------------------------------------

function listFilter() {
  if (state.search) return { text: state.search };
  return state.mailboxId ? { inMailbox: state.mailboxId } : null;
}

async function loadList() {
  let page = await state.mail.list(listFilter(), state.position, PAGE_SIZE);
  if (!page.emails.length && state.position > 0) {
    // The last page emptied (deleted, moved): show the one before.
    state.position = Math.max(0, state.position - PAGE_SIZE);
    page = await state.mail.list(listFilter(), state.position, PAGE_SIZE);
  }
  state.total = page.total;
  state.position = page.position;
  const box = state.mail.mailbox(state.mailboxId);
  $("list-title").textContent = state.search ? `Search: ${state.search}` : box ? box.name : "";
  const showTo = box && (box.role === "sent" || box.role === "drafts");
  const items = page.emails.map((email) => {
    const count = page.threads.get(email.threadId) || 1;
    const unread = !(email.keywords || {}).$seen;
    const flagged = (email.keywords || {}).$flagged;
    const classes = [unread ? "unread" : "", state.current && state.current.id === email.id ? "current" : ""];
    return h("li", { class: classes.join(" ").trim() || null, dataset: { emailId: email.id } },
      h("button", { type: "button", onclick: () => openEmail(email) },
        h("span", { class: "who" },
          flagged ? h("span", { class: "flag", title: "flagged" }, "\u2605 ") : null,
          shortName(showTo ? email.to : email.from) || "(nobody)",
          count > 1 ? h("span", { class: "thread-count", title: "messages in the conversation" }, `(${count})`) : null),
        h("span", { class: "date" }, formatDate(email.receivedAt)),
        h("span", { class: "subject" }, email.subject || "(no subject)"),
        h("span", { class: "preview" }, email.preview || "")));
  });
  fill($("message-list"), items);
  $("list-empty").hidden = items.length > 0;
  const last = Math.min(state.position + PAGE_SIZE, state.total);
  $("page-info").textContent = state.total ? `${state.position + 1}\u2013${last} of ${state.total}` : "";
  $("prev-page").disabled = state.position === 0;
  $("next-page").disabled = last >= state.total;
}

function page(delta) {
  state.position = Math.max(0, state.position + delta * PAGE_SIZE);
  loadList().catch(report);
}

async function search(event) {
  event.preventDefault();
  state.search = $("search-input").value.trim();
  state.position = 0;
  if (!state.search) return openMailbox(state.mailboxId);
  await loadList();
  view("list");
}

// -- reading ----------------------------------------------------------------

async function openEmail(summary) {
  const email = await state.mail.read(summary.id);
  const drafts = state.mail.byRole("drafts");
  if ((email.keywords || {}).$draft && drafts && email.mailboxIds[drafts.id]) {
    state.composer.open({ draft: email });
    return openComposer();
  }
  state.current = email;
  renderReader(email);
  view("reader");
  for (const li of $("message-list").children) {
    li.classList.toggle("current", li.dataset.emailId === email.id);
  }
  if (!(email.keywords || {}).$seen) {
    await state.mail.setKeyword(email.id, "$seen", true);
    email.keywords = Object.assign({}, email.keywords, { $seen: true });
    await refresh();
  }
}

function renderBody(email) {
  if (state.config.html && hasHtml(email)) {
    const frame = h("iframe", {
      id: "message-frame", title: "Message",
      // No allow-scripts, no allow-same-origin: the document is inert and
      // has an opaque origin; links open outside the sandbox.
      sandbox: "allow-popups allow-popups-to-escape-sandbox",
      referrerpolicy: "no-referrer",
      src: renderUrl(email, false),
    });
    const show = h("button", { id: "show-images", type: "button" }, "Show images");
    show.addEventListener("click", () => {
      frame.setAttribute("src", renderUrl(email, true));
      show.disabled = true;
    });
    return [h("p", { class: "images-note" }, "Remote images are blocked. ", show), frame];
  }
  return [h("pre", { id: "message-text", class: "message-text" }, bodyText(email))];
}

function renderUrl(email, images) {
  const account = encodeURIComponent(state.client.accountId);
  const blob = encodeURIComponent(email.blobId);
  return `/webmail/render/${account}/${blob}${images ? "?images=1" : ""}`;
}

function renderReader(email) {
  const keywords = email.keywords || {};
  const move = h("select", { id: "move-to", "aria-label": "Move to" },
    h("option", { value: "" }, "Move to\u2026"),
    sortedMailboxes().filter((m) => !email.mailboxIds[m.id])
      .map((m) => h("option", { value: m.id }, m.name)));
  move.addEventListener("change", () => {
    if (move.value) act(() => state.mail.move(email.id, move.value), "Moved", true);
  });
  const toolbar = h("div", { class: "toolbar" },
    h("button", { id: "reply", type: "button", onclick: () => compose({ reply: email }) }, "Reply"),
    h("button", { id: "reply-all", type: "button", onclick: () => compose({ reply: email, all: true }) }, "Reply all"),
    h("button", { id: "forward", type: "button", onclick: () => compose({ forward: email }) }, "Forward"),
    h("button", { id: "delete", type: "button", onclick: () => act(() => state.mail.remove(email), "Deleted", true) }, "Delete"),
    h("button", {
      id: "flag", type: "button",
      onclick: () => act(() => state.mail.setKeyword(email.id, "$flagged", !keywords.$flagged), null),
    }, keywords.$flagged ? "Unflag" : "Flag"),
    h("button", {
      id: "mark-unread", type: "button",
      onclick: () => act(() => state.mail.setKeyword(email.id, "$seen", false), "Marked unread", true),
    }, "Mark unread"),
    move);
  const attachments = (email.attachments || []).length
    ? h("ul", { class: "attachments", id: "attachments" }, email.attachments.map((a) =>
      h("li", {}, h("a", {
        href: state.client.downloadUrl(a.blobId, a.name, a.type), download: a.name || "attachment",
        rel: "noopener noreferrer",
      }, a.name || a.type), ` (${formatSize(a.size || 0)})`)))
    : null;
  fill($("reader-pane"),
    h("h2", { id: "reader-subject" }, email.subject || "(no subject)"),
    h("div", { class: "headers" },
      h("div", { id: "reader-from" }, "From: ", formatAddresses(email.from)),
      email.to && email.to.length ? h("div", {}, "To: ", formatAddresses(email.to)) : null,
      email.cc && email.cc.length ? h("div", {}, "Cc: ", formatAddresses(email.cc)) : null,
      h("div", {}, "Date: ", formatDate(email.sentAt || email.receivedAt, true))),
    toolbar, attachments, renderBody(email));
  showThread(email).catch(() => {});
}

async function showThread(email) {
  const emails = await state.mail.thread(email.threadId);
  if (emails.length < 2 || state.current !== email) return;
  $("reader-pane").append(h("ul", { class: "thread-list", id: "thread-list" },
    h("li", {}, h("strong", {}, `Conversation (${emails.length})`)),
    emails.map((e) => h("li", {}, h("button", {
      type: "button", disabled: e.id === email.id, onclick: () => openEmail(e),
    }, `${formatDate(e.receivedAt)} \u2014 ${shortName(e.from)}: ${e.subject || ""}`)))));
}

/** Run an action on the current message, then refresh; leave the reader if it moved. */
async function act(fn, message, leave) {
  try {
    await fn();
    if (message) toast(message);
    if (leave) {
      state.current = null;
      fill($("reader-pane"), h("p", { class: "empty" }, "No message selected"));
      view("list");
    } else if (state.current) {
      renderReader(await state.mail.read(state.current.id));
    }
    await refresh();
  } catch (e) {
    report(e);
  }
}

// -- composing ---------------------------------------------------------------

function compose(what) {
  state.composer.open(what || {});
  openComposer();
}

function openComposer() {
  $("compose-pane").hidden = false;
  view("compose");
}

function closeComposer() {
  $("compose-pane").hidden = true;
  view(state.current ? "reader" : "list");
}

// -- live updates -----------------------------------------------------------

let refreshTimer = null;
function onPush() {
  // Several changes often come together: refresh once.
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => refresh().catch(report), 150);
}

async function refresh() {
  await state.mail.loadMailboxes();
  renderFolders();
  await loadList();
}

function report(error) {
  console.error(error);
  toast(error && error.message ? error.message : String(error));
}

// -- wiring -------------------------------------------------------------------

function back() {
  const now = document.body.dataset.view;
  if (now === "reader" || now === "compose") view("list");
  else view("folders");
}

async function boot() {
  $("login-form").addEventListener("submit", login);
  $("logout-button").addEventListener("click", logout);
  $("search-form").addEventListener("submit", (e) => search(e).catch(report));
  $("prev-page").addEventListener("click", () => page(-1));
  $("next-page").addEventListener("click", () => page(1));
  $("compose-button").addEventListener("click", () => compose({}));
  $("nav-back").addEventListener("click", back);
  $("nav-folders").addEventListener("click", () => view("folders"));
  window.addEventListener("unhandledrejection", (e) => report(e.reason));
  // Still logged in (the cookie)?  The answer carries the CSRF token.
  const response = await fetch("/webmail/session", { credentials: "same-origin", cache: "no-store" });
  if (response.ok) {
    try {
      await start(await response.json());
      return;
    } catch (e) {
      showLogin(e.message);
      return;
    }
  }
  showLogin("");
}

boot().catch((e) => showLogin(e.message));
