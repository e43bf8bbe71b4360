// DOM helpers.  Mail data only ever reaches the page as text nodes or
// attribute values set with setAttribute: nothing here parses HTML.

/**
 * Make an element: h("li", {class: "x", dataset: {id}}, "text", child...).
 * Strings among the children become text nodes; null/undefined/false are skipped.
 */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "onclick") el.addEventListener("click", value);
    else if (key === "onchange") el.addEventListener("change", value);
    else if (key.startsWith("on")) throw new Error("unsupported handler " + key);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace the children of el by children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const $ = (id) => document.getElementById(id);

/** "Name <email>" or "email" of a JMAP EmailAddress. */
export function formatAddress(a) {
  if (!a) return "";
  return a.name ? `${a.name} <${a.email}>` : a.email || "";
}

export function formatAddresses(list) {
  return (list || []).map(formatAddress).join(", ");
}

/** The short name of a sender for the message list. */
export function shortName(list) {
  const a = (list || [])[0];
  return a ? a.name || a.email || "" : "";
}

/** A date for the list: the time today, the day otherwise. */
export function formatDate(iso, full) {
  if (!iso) return "";
  const d = new Date(iso);
  if (full) return d.toLocaleString();
  const now = new Date();
  if (d.toDateString() === now.toDateString()) {
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }
  return d.toLocaleDateString();
}

export function formatSize(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${Math.round(n / 1024)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

/**
 * Parse what the reader typed in an address field into EmailAddress
 * objects: "Name <a@b>, c@d".  Commas inside quotes do not split.
 */
export function parseAddresses(text) {
  const out = [];
  let current = "";
  let quoted = false;
  for (const ch of text || "") {
    if (ch === '"') quoted = !quoted;
    if (ch === "," && !quoted) {
      out.push(current);
      current = "";
    } else current += ch;
  }
  out.push(current);
  return out
    .map((s) => s.trim())
    .filter(Boolean)
    .map((s) => {
      const m = s.match(/^(.*)<([^<>]+)>\s*$/);
      if (!m) return { name: null, email: s };
      const name = m[1].trim().replace(/^"(.*)"$/, "$1");
      return { name: name || null, email: m[2].trim() };
    });
}

let toastTimer = null;
/** Tell the reader something for a few seconds. */
export function toast(message) {
  const el = $("toast");
  el.textContent = message;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, 4000);
}
