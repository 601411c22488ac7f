// Shared by the dashboard and the upload demo: where the API key comes from and how requests carry it.
// The key arrives in the URL fragment (#key=..., never sent to a server or written to access logs) or
// from the login form, and is kept in sessionStorage for this tab only.
"use strict";

const minicdnAuth = (() => {
  const STORAGE = "minicdn.api_key";

  function adoptFragment() {
    const params = new URLSearchParams(window.location.hash.slice(1));
    const key = params.get("key");
    if (key) {
      sessionStorage.setItem(STORAGE, key);
      history.replaceState(null, "", window.location.pathname + window.location.search);
    }
  }

  function key() {
    return sessionStorage.getItem(STORAGE) || "";
  }

  function setKey(value) {
    if (value) sessionStorage.setItem(STORAGE, value.trim());
    else sessionStorage.removeItem(STORAGE);
  }

  async function api(method, path, body) {
    const headers = { Authorization: "Bearer " + key() };
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    let data = null;
    try { data = await resp.json(); } catch (_) { data = null; }
    if (!resp.ok) {
      const err = new Error((data && data.error && data.error.message) || resp.statusText);
      err.status = resp.status;
      err.code = data && data.error && data.error.code;
      throw err;
    }
    return data;
  }

  // Wire a <form> with an <input name="key"> to set the key and call onLogin().
  function bindLogin(form, onLogin) {
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      setKey(form.elements.key.value);
      form.elements.key.value = "";
      onLogin();
    });
  }

  adoptFragment();
  return { key, setKey, api, bindLogin };
})();

function humanBytes(n) {
  if (n === null || n === undefined || isNaN(n)) return "–";
  const units = ["B", "KB", "MB", "GB", "TB", "PB"];
  let v = Number(n), i = 0;
  while (Math.abs(v) >= 1000 && i < units.length - 1) { v /= 1000; i++; }
  return (i === 0 ? v.toFixed(0) : v.toFixed(v < 10 ? 2 : 1)) + " " + units[i];
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, String(v));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}
