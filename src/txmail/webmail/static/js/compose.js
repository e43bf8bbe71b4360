// The composer: new messages, replies, forwards and drafts.

import { $, fill, formatAddress, formatAddresses, formatDate, formatSize, h, parseAddresses, toast } from "./dom.js";
import { bodyText } from "./mail.js";

function prefixed(prefix, subject) {
  subject = subject || "";
  return subject.toLowerCase().startsWith(prefix.toLowerCase()) ? subject : `${prefix} ${subject}`;
}

function quote(text) {
  return text.replace(/\s+$/, "").split("\n").map((line) => `> ${line}`).join("\n");
}

export class Composer {
  constructor(mail, { onClose, onSent }) {
    this.mail = mail;
    this.onClose = onClose;
    this.onSent = onSent;
    this.attachments = [];  // {blobId, name, type, size}
    this.draftId = null;
    this.inReplyTo = null;
    this.references = null;
    this.uploads = 0;
    $("compose-form").addEventListener("submit", (e) => { e.preventDefault(); this.send(); });
    $("compose-save").addEventListener("click", () => this.save());
    $("compose-discard").addEventListener("click", () => this.close());
    $("compose-files").addEventListener("change", (e) => this.upload(e.target.files));
  }

  /** My own addresses: left out of a reply-all. */
  mine() {
    return new Set(this.mail.identities.map((i) => (i.email || "").toLowerCase()));
  }

  /**
   * Open the composer: {} for a new message, {reply, all} for a reply,
   * {forward} for a forward, {draft} to go on with a draft.
   */
  open({ reply, all, forward, draft }) {
    const from = $("compose-from");
    fill(from, this.mail.identities.map((identity, i) =>
      h("option", { value: String(i) }, formatAddress(identity))));
    this.attachments = [];
    this.draftId = null;
    this.inReplyTo = null;
    this.references = null;
    let to = [], cc = [], bcc = [], subject = "", text = "", title = "New message";
    if (reply) {
      title = all ? "Reply to all" : "Reply";
      const mine = this.mine();
      to = (reply.replyTo && reply.replyTo.length ? reply.replyTo : reply.from) || [];
      if (all) {
        const seen = new Set(to.map((a) => a.email.toLowerCase()));
        const others = [...(reply.to || []), ...(reply.cc || [])].filter((a) => {
          const key = (a.email || "").toLowerCase();
          if (mine.has(key) || seen.has(key)) return false;
          seen.add(key);
          return true;
        });
        cc = others;
      }
      subject = prefixed("Re:", reply.subject);
      this.inReplyTo = reply.messageId || null;
      this.references = [...(reply.references || []), ...(reply.messageId || [])];
      const who = formatAddresses(reply.from);
      text = `\n\nOn ${formatDate(reply.sentAt || reply.receivedAt, true)}, ${who} wrote:\n${quote(bodyText(reply))}\n`;
    } else if (forward) {
      title = "Forward";
      subject = prefixed("Fwd:", forward.subject);
      text = [
        "", "", "---------- Forwarded message ----------",
        `From: ${formatAddresses(forward.from)}`,
        `Date: ${formatDate(forward.sentAt || forward.receivedAt, true)}`,
        `Subject: ${forward.subject || ""}`,
        `To: ${formatAddresses(forward.to)}`, "", bodyText(forward), "",
      ].join("\n");
      // The original's attachments go along by blob id: no upload needed.
      this.attachments = (forward.attachments || []).map((a) => ({
        blobId: a.blobId, name: a.name, type: a.type, size: a.size,
      }));
    } else if (draft) {
      title = "Draft";
      this.draftId = draft.id;
      to = draft.to || [];
      cc = draft.cc || [];
      bcc = draft.bcc || [];
      subject = draft.subject || "";
      // The stored text part ends with the line break the message added.
      text = bodyText(draft).replace(/\r?\n$/, "");
      this.inReplyTo = draft.inReplyTo || null;
      this.references = draft.references || null;
      this.attachments = (draft.attachments || []).map((a) => ({
        blobId: a.blobId, name: a.name, type: a.type, size: a.size,
      }));
    }
    $("compose-title").textContent = title;
    $("compose-to").value = formatAddresses(to);
    $("compose-cc").value = formatAddresses(cc);
    $("compose-bcc").value = formatAddresses(bcc);
    $("compose-subject").value = subject;
    $("compose-body").value = text;
    $("compose-status").textContent = "";
    $("compose-files").value = "";
    this.renderAttachments();
    (to.length ? $("compose-body") : $("compose-to")).focus();
    if (reply || forward) $("compose-body").setSelectionRange(0, 0);
  }

  renderAttachments() {
    fill($("compose-attachments"), this.attachments.map((a, i) => h("li", {},
      `${a.name || a.type} (${formatSize(a.size || 0)}) `,
      h("button", {
        type: "button", title: "Remove", "aria-label": `Remove ${a.name || "attachment"}`,
        onclick: () => { this.attachments.splice(i, 1); this.renderAttachments(); },
      }, "\u00d7"))));
  }

  async upload(files) {
    for (const file of files) {
      this.uploads += 1;
      $("compose-status").textContent = `Uploading ${file.name}\u2026`;
      try {
        const blob = await this.mail.client.upload(file);
        this.attachments.push({ blobId: blob.blobId, name: file.name, type: blob.type || file.type, size: blob.size });
        this.renderAttachments();
        $("compose-status").textContent = "";
      } catch (e) {
        $("compose-status").textContent = `Upload failed: ${e.message}`;
      } finally {
        this.uploads -= 1;
      }
    }
  }

  message() {
    return {
      identity: this.mail.identities[Number($("compose-from").value) || 0],
      to: parseAddresses($("compose-to").value),
      cc: parseAddresses($("compose-cc").value),
      bcc: parseAddresses($("compose-bcc").value),
      subject: $("compose-subject").value,
      text: $("compose-body").value,
      attachments: this.attachments,
      inReplyTo: this.inReplyTo,
      references: this.references,
      draftId: this.draftId,
    };
  }

  async send() {
    const message = this.message();
    if (!message.to.length && !message.cc.length && !message.bcc.length) {
      $("compose-status").textContent = "Add a recipient";
      return;
    }
    if (this.uploads) {
      $("compose-status").textContent = "Wait for the uploads to finish";
      return;
    }
    $("compose-send").disabled = true;
    $("compose-status").textContent = "Sending\u2026";
    try {
      await this.mail.send(message);
      toast("Message sent");
      this.close();
      await this.onSent();
    } catch (e) {
      $("compose-status").textContent = `Not sent: ${e.message}`;
    } finally {
      $("compose-send").disabled = false;
    }
  }

  async save() {
    $("compose-status").textContent = "Saving\u2026";
    try {
      this.draftId = await this.mail.saveDraft(this.message());
      $("compose-status").textContent = "Draft saved";
      await this.onSent();
    } catch (e) {
      $("compose-status").textContent = `Not saved: ${e.message}`;
    }
  }

  close() {
    this.onClose();
  }
}
