// The mail operations of the webmail, as JMAP requests (RFC 8621).

import { CORE, MAIL, SUBMISSION } from "./jmap.js";

export const LIST_PROPERTIES = [
  "id", "threadId", "mailboxIds", "keywords", "from", "to", "subject",
  "receivedAt", "preview", "hasAttachment", "size",
];

export const READ_PROPERTIES = [
  "id", "blobId", "threadId", "mailboxIds", "keywords", "from", "to", "cc",
  "bcc", "replyTo", "subject", "sentAt", "receivedAt", "messageId",
  "inReplyTo", "references", "textBody", "htmlBody", "attachments",
  "bodyValues", "hasAttachment", "preview",
];

const ROLE_NAMES = {
  drafts: ["drafts"],
  sent: ["sent", "sent items", "sent messages"],
  trash: ["trash", "deleted items", "deleted messages"],
};

const BODY_PROPERTIES = ["partId", "blobId", "size", "name", "type", "charset", "disposition", "cid"];

export class Mail {
  constructor(client) {
    this.client = client;
    this.mailboxes = [];
    this.identities = [];
  }

  /** The mailbox with a role; failing that, one with the role's usual name. */
  byRole(role) {
    const names = ROLE_NAMES[role] || [];
    return this.mailboxes.find((m) => m.role === role) ||
      this.mailboxes.find((m) => !m.role && !m.parentId && names.includes(m.name.toLowerCase())) || null;
  }

  mailbox(id) {
    return this.mailboxes.find((m) => m.id === id) || null;
  }

  /** Every mailbox, with its counts. */
  async loadMailboxes() {
    const [[, result]] = await this.client.request([["Mailbox/get", {
      ids: null,
      properties: ["id", "name", "parentId", "role", "sortOrder", "totalEmails",
        "unreadEmails", "totalThreads", "unreadThreads"],
    }]]);
    this.mailboxes = result.list;
    return this.mailboxes;
  }

  /**
   * Create the Drafts, Sent and Trash mailboxes a new account may lack
   * (with their roles, RFC 8621 section 2), so that drafts, sent mail and
   * deleted mail have a place.  A refusal leaves things as they are.
   */
  async ensureMailboxes() {
    const wanted = { drafts: "Drafts", sent: "Sent", trash: "Trash" };
    const create = {};
    for (const [role, name] of Object.entries(wanted)) {
      if (!this.byRole(role)) {
        create[role] = { name, role, parentId: null };
      }
    }
    if (!Object.keys(create).length) return;
    try {
      await this.client.request([["Mailbox/set", { create }]]);
    } catch (e) {
      console.warn("could not create the special mailboxes", e);
    }
    await this.loadMailboxes();
  }

  async loadIdentities() {
    try {
      const [[, result]] = await this.client.request(
        [["Identity/get", { ids: null }]], [CORE, MAIL, SUBMISSION]);
      this.identities = result.list;
    } catch (e) {
      this.identities = [];
    }
    if (!this.identities.length) {
      const email = this.client.username;
      this.identities = [{ id: null, name: "", email }];
    }
    return this.identities;
  }

  /**
   * One page of a list, newest first, threads collapsed: {emails, threads
   * (threadId -> number of emails), total, position}.
   */
  async list(filter, position, limit) {
    const responses = await this.client.request([
      ["Email/query", {
        filter, sort: [{ property: "receivedAt", isAscending: false }],
        collapseThreads: true, position, limit, calculateTotal: true,
      }],
      ["Email/get", {
        "#ids": { resultOf: "0", name: "Email/query", path: "/ids" },
        properties: LIST_PROPERTIES,
      }],
      ["Thread/get", {
        "#ids": { resultOf: "1", name: "Email/get", path: "/list/*/threadId" },
      }],
    ]);
    const query = responses[0][1];
    const byId = new Map(responses[1][1].list.map((e) => [e.id, e]));
    const threads = new Map(responses[2][1].list.map((t) => [t.id, t.emailIds.length]));
    return {
      emails: query.ids.map((id) => byId.get(id)).filter(Boolean),
      threads, total: query.total, position: query.position,
    };
  }

  /** The email to read, with its text bodies fetched. */
  async read(id) {
    const [[, result]] = await this.client.request([["Email/get", {
      ids: [id], properties: READ_PROPERTIES, bodyProperties: BODY_PROPERTIES,
      fetchTextBodyValues: true,
    }]]);
    if (!result.list.length) throw new Error("This message no longer exists");
    return result.list[0];
  }

  /** The emails of a thread (oldest first) with what the reader shows of each. */
  async thread(threadId) {
    const responses = await this.client.request([
      ["Thread/get", { ids: [threadId] }],
      ["Email/get", {
        "#ids": { resultOf: "0", name: "Thread/get", path: "/list/*/emailIds" },
        properties: ["id", "from", "subject", "receivedAt", "keywords", "mailboxIds"],
      }],
    ]);
    return responses[1][1].list;
  }

  /** Apply patches {id: PatchObject}; throws when one is not applied. */
  async update(patches) {
    const [[, result]] = await this.client.request([["Email/set", { update: patches }]]);
    const failed = Object.values(result.notUpdated || {});
    if (failed.length) throw new Error(failed[0].description || failed[0].type);
  }

  setKeyword(id, keyword, on) {
    return this.update({ [id]: { [`keywords/${keyword}`]: on ? true : null } });
  }

  move(id, mailboxId) {
    return this.update({ [id]: { mailboxIds: { [mailboxId]: true } } });
  }

  async destroy(ids) {
    const [[, result]] = await this.client.request([["Email/set", { destroy: ids }]]);
    const failed = Object.values(result.notDestroyed || {});
    if (failed.length) throw new Error(failed[0].description || failed[0].type);
  }

  /** Delete: to Trash, or for good when it already is in Trash. */
  async remove(email) {
    const trash = this.byRole("trash");
    if (!trash || email.mailboxIds[trash.id]) return this.destroy([email.id]);
    return this.move(email.id, trash.id);
  }

  /** The Email/set create object of a message being written. */
  draftObject(message) {
    const drafts = this.byRole("drafts") || this.byRole("sent") || this.byRole("inbox");
    const email = {
      mailboxIds: { [drafts.id]: true },
      keywords: { $draft: true, $seen: true },
      from: [{ name: message.identity.name || null, email: message.identity.email }],
      to: message.to, subject: message.subject,
      textBody: [{ partId: "body", type: "text/plain" }],
      bodyValues: { body: { value: message.text } },
    };
    if (message.cc.length) email.cc = message.cc;
    if (message.bcc.length) email.bcc = message.bcc;
    if (message.inReplyTo && message.inReplyTo.length) email.inReplyTo = message.inReplyTo;
    if (message.references && message.references.length) email.references = message.references;
    if (message.attachments.length) {
      email.attachments = message.attachments.map((a) => ({
        blobId: a.blobId, type: a.type || "application/octet-stream",
        name: a.name || null, disposition: "attachment",
      }));
    }
    return email;
  }

  /** Save a draft (replacing the one it was opened from): the new draft's id. */
  async saveDraft(message) {
    const args = { create: { draft: this.draftObject(message) } };
    if (message.draftId) args.destroy = [message.draftId];
    const [[, result]] = await this.client.request([["Email/set", args]]);
    if (!result.created || !result.created.draft) {
      const error = (result.notCreated || {}).draft || {};
      throw new Error(error.description || error.type || "the draft was not saved");
    }
    return result.created.draft.id;
  }

  /**
   * Send: create the email as a draft, submit it with the identity, and
   * on success file it in Sent (RFC 8621 section 7.5, onSuccessUpdateEmail).
   */
  async send(message) {
    const drafts = this.byRole("drafts");
    const sent = this.byRole("sent");
    const emailArgs = { create: { draft: this.draftObject(message) } };
    if (message.draftId) emailArgs.destroy = [message.draftId];
    const onSuccess = { "keywords/$draft": null };
    if (sent && drafts) {
      onSuccess[`mailboxIds/${drafts.id}`] = null;
      onSuccess[`mailboxIds/${sent.id}`] = true;
    }
    const submission = { emailId: "#draft" };
    if (message.identity.id) submission.identityId = message.identity.id;
    const responses = await this.client.request([
      ["Email/set", emailArgs],
      ["EmailSubmission/set", {
        create: { send: submission },
        onSuccessUpdateEmail: { "#send": onSuccess },
      }],
    ], [CORE, MAIL, SUBMISSION]);
    const created = responses[0][1];
    if (!created.created || !created.created.draft) {
      const error = (created.notCreated || {}).draft || {};
      throw new Error(error.description || error.type || "the message was not created");
    }
    const submitted = responses[1][1];
    if (!submitted.created || !submitted.created.send) {
      const error = (submitted.notCreated || {}).send || {};
      throw new Error(error.description || error.type || "the message was not sent");
    }
  }
}

/** The text of an email's text body parts, joined. */
export function bodyText(email) {
  const values = email.bodyValues || {};
  return (email.textBody || [])
    .map((part) => (values[part.partId] ? values[part.partId].value : ""))
    .join("\n");
}

/** Whether the email has an HTML body to show in the frame. */
export function hasHtml(email) {
  return (email.htmlBody || []).some((part) => part.type === "text/html");
}
