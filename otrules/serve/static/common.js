// Shared by every page. Text from events is only ever set with textContent: never parsed as HTML.
"use strict";
window.otrules = {
  el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
    }
    for (const child of children) if (child != null) node.append(child);
    return node;
  },
  badge(indicator) {
    return otrules.el("span", { class: "badge " + indicator, text: indicator });
  },
  async json(url, options) {
    const response = await fetch(url, Object.assign({ credentials: "same-origin", headers: { "Accept": "application/json" } }, options || {}));
    if (response.status === 401) { window.location.href = "/login"; throw new Error("sign in"); }
    if (!response.ok) throw new Error(url + ": " + response.status);
    return { body: await response.json(), response };
  },
  status(text) { const s = document.getElementById("status"); if (s) s.textContent = text; },
  day(iso) { return iso ? iso.slice(0, 10) : ""; },
  // The engine escapes event text in summaries for Markdown and HTML renderers (so a card cannot
  // carry markup); drawn as text here, the escapes come off for people to read.
  plain(text) {
    return String(text || "").replace(/\\(.)/g, "$1").replace(/&lt;/g, "<").replace(/&gt;/g, ">")
      .replace(/&quot;/g, '"').replace(/&#39;/g, "'").replace(/&amp;/g, "&");
  },
  // an id of dots alone would be a "." or ".." path segment, which every URL parser climbs out of
  patientUrl(id) { return /^\.+$/.test(id) ? "/patients/?id=" + encodeURIComponent(id) : "/patients/" + encodeURIComponent(id); },
  // Live: calls back with each recommendation opened or closed (and on a "reload", with null).
  follow(since, onChange) {
    const source = new EventSource("/api/stream?since=" + encodeURIComponent(since));
    source.addEventListener("opened", (event) => onChange(JSON.parse(event.data)));
    source.addEventListener("closed", (event) => onChange(JSON.parse(event.data)));
    source.addEventListener("reload", () => { source.close(); onChange(null); });
    return source;
  },
};
