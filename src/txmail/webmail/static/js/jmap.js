// A small JMAP client (RFC 8620) over the webmail's session cookie.
//
// The cookie (HttpOnly) carries the bearer token; this script never sees
// it.  Every state-changing request carries the session's CSRF token in the
// X-CSRF-Token header, which the server checks against the cookie.

export const CORE = "urn:ietf:params:jmap:core";
export const MAIL = "urn:ietf:params:jmap:mail";
export const SUBMISSION = "urn:ietf:params:jmap:submission";

export class JmapError extends Error {
  constructor(type, description, details) {
    super(description ? `${type}: ${description}` : type);
    this.type = type;
    this.details = details;
  }
}

/** Fill a URL template of the session resource (RFC 6570 level 1). */
export function expand(template, values) {
  return template.replace(/\{(\w+)\}/g, (_, name) => encodeURIComponent(values[name] ?? ""));
}

export class Client {
  /**
   * csrfToken: the session's CSRF token; expiresIn: seconds the session
   * cookie lasts (the token's idle timeout), renewed while the reader works.
   */
  constructor(csrfToken, expiresIn) {
    this.csrfToken = csrfToken;
    this.expiresIn = expiresIn || 3600;
    this.renewedAt = Date.now();
    this.session = null;
    this.accountId = null;
    this.onUnauthorized = () => {};
  }

  async fetch(url, options = {}) {
    const headers = Object.assign({}, options.headers || {});
    const method = (options.method || "GET").toUpperCase();
    if (method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = this.csrfToken;
    const response = await fetch(url, Object.assign({}, options, {
      headers, credentials: "same-origin", cache: "no-store", redirect: "follow",
    }));
    if (response.status === 401) {
      this.onUnauthorized();
      throw new JmapError("unauthorized", "the session has expired");
    }
    return response;
  }

  /** Fetch the session resource (RFC 8620 section 2). */
  async connect() {
    const response = await this.fetch("/.well-known/jmap");
    if (!response.ok) throw new JmapError("session", `HTTP ${response.status}`);
    this.session = await response.json();
    this.accountId = this.session.primaryAccounts[MAIL] ||
      Object.keys(this.session.accounts)[0];
    return this.session;
  }

  get username() { return this.session ? this.session.username : ""; }

  /**
   * Make one API request.  calls is a list of [name, arguments] (the
   * account id is added; call ids are the positions); the answer is the
   * list of responses [name, arguments, id], in order.  A method error
   * among them is thrown as a JmapError.
   */
  async request(calls, using = [CORE, MAIL]) {
    const methodCalls = calls.map(([name, args], i) =>
      [name, Object.assign({ accountId: this.accountId }, args), String(i)]);
    const response = await this.fetch(this.session.apiUrl, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ using, methodCalls }),
    });
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok || !body || !body.methodResponses) {
      const problem = body && body.type ? body.type : `HTTP ${response.status}`;
      throw new JmapError("request", problem, body);
    }
    for (const [name, args] of body.methodResponses) {
      if (name === "error") throw new JmapError(args.type, args.description, args);
    }
    this.renewCookie();
    return body.methodResponses;
  }

  /**
   * The cookie's Max-Age counts from when it was set, the token's idle time
   * from its last use: while the reader works, have the cookie set again
   * (GET /webmail/session) once a quarter of its life has gone.
   */
  renewCookie() {
    if (Date.now() - this.renewedAt < (this.expiresIn * 1000) / 4) return;
    this.renewedAt = Date.now();
    fetch("/webmail/session", { credentials: "same-origin", cache: "no-store" }).catch(() => {});
  }

  /** Upload a File or Blob (RFC 8620 section 6.1): its {blobId, type, size}. */
  async upload(file) {
    const url = expand(this.session.uploadUrl, { accountId: this.accountId });
    const response = await this.fetch(url, {
      method: "POST",
      headers: { "Content-Type": file.type || "application/octet-stream" },
      body: file,
    });
    if (!response.ok) throw new JmapError("upload", `HTTP ${response.status}`);
    return response.json();
  }

  downloadUrl(blobId, name, type) {
    return expand(this.session.downloadUrl, {
      accountId: this.accountId, blobId, name: name || "attachment",
      type: type || "application/octet-stream",
    });
  }

  /**
   * Listen for state changes (RFC 8620 section 7.3); onChange gets the
   * StateChange's changes of this account.  Same-origin EventSource sends
   * the cookie; a GET needs no CSRF token.
   */
  listen(onChange) {
    if (!this.session.eventSourceUrl || typeof EventSource === "undefined") return null;
    const url = expand(this.session.eventSourceUrl, { types: "*", closeafter: "no", ping: "60" });
    const source = new EventSource(url);
    source.addEventListener("state", (event) => {
      let data = null;
      try { data = JSON.parse(event.data); } catch (e) { return; }
      const changed = (data && data.changed) || {};
      if (changed[this.accountId]) onChange(changed[this.accountId]);
    });
    return source;
  }
}
