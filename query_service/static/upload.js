// The upload demo: the six steps of an upload, in the browser. Ask the query service for a signed
// URL, PUT the file straight to the node with a progress bar, poll the status while the other
// regions copy it, and show it from the nearest node.
"use strict";

const $ = (id) => document.getElementById(id);
const READY = "ready";  // processed: only then does the query service hand out its URL
const FAILED = ["rejected", "quarantined", "deleted"];

function log(text) {
  $("log").append(el("li", { text: `${new Date().toLocaleTimeString()}  ${text}` }));
}

function fail(message) {
  $("error").textContent = message;
  log("error: " + message);
  $("go").disabled = false;
}

function putWithProgress(url, file) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", url);
    xhr.setRequestHeader("Content-Type", file.type || "application/octet-stream");
    xhr.upload.onprogress = (ev) => {
      if (!ev.lengthComputable) return;
      const p = Math.round((ev.loaded / ev.total) * 100);
      $("progress").value = p;
      $("percent").textContent = p + " %";
    };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (_) { body = null; }
      if (xhr.status === 201) {
        $("progress").value = 100;
        $("percent").textContent = "100 %";
        resolve({ body, requestId: xhr.getResponseHeader("X-Request-Id") });
      } else {
        const msg = body && body.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${xhr.status}`;
        reject(new Error(msg));
      }
    };
    xhr.onerror = () => reject(new Error("the node could not be reached"));
    xhr.send(file);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function showReplicas(replicas) {
  $("replicas").textContent = (replicas || []).map((r) => `${r.region}: ${r.state}`).join(" · ") || "–";
}

async function pollUntilReplicated(imageId) {
  // Poll while the node processes it and the other regions copy it; stop when it is ready with every
  // replica ok (after 60 s, go on once it is ready: it is served from the replicas it has).
  const deadline = Date.now() + 60000;
  let image = null;
  const giveUp = Date.now() + 180000;
  for (;;) {
    image = await minicdnAuth.api("GET", `/v1/images/${imageId}`);
    $("status").textContent = image.status;
    showReplicas(image.replicas);
    if (FAILED.includes(image.status)) throw new Error(`image ${image.status}: ${image.reason || ""}`);
    const allOk = image.replicas.length > 0 && image.replicas.every((r) => r.state === "ok");
    if (image.status === READY && (allOk || Date.now() > deadline)) return image;
    if (Date.now() > giveUp) throw new Error(`still ${image.status} after 3 minutes`);
    await sleep(400);
  }
}

async function upload(ev) {
  ev.preventDefault();
  const file = $("file").files[0];
  if (!file) return;
  $("go").disabled = true;
  $("error").textContent = "";
  $("log").replaceChildren();
  $("result").hidden = true;
  $("progress").value = 0;
  try {
    log(`1. asking for an upload URL for ${file.name} (${humanBytes(file.size)})`);
    const ticket = await minicdnAuth.api("POST", "/v1/uploads", {
      filename: file.name, size: file.size, content_type: file.type || undefined,
      visibility: $("private").checked ? "private" : "public",
    });
    $("image-id").textContent = ticket.image_id;
    $("placed").textContent = `${ticket.node_id} (${ticket.region})`;
    $("status").textContent = ticket.status;
    log(`2. PUT to ${ticket.node_id} in ${ticket.region}`);
    const put = await putWithProgress(ticket.upload_url, file);
    log(`   stored: ${humanBytes(put.body.bytes)}, sha256 ${put.body.sha256.slice(0, 12)}…, request ${put.requestId}`);
    log("3. waiting for processing and for the other regions to copy it");
    const image = await pollUntilReplicated(ticket.image_id);
    log(`   status ${image.status}; replicas ${image.replicas.map((r) => r.state).join(", ")}`);
    const box = Math.round(Math.min(window.innerWidth - 48, 800));
    const params = new URLSearchParams({ w: String(box), dpr: String(window.devicePixelRatio || 1) });
    const found = await minicdnAuth.api("GET", `/v1/images/${ticket.image_id}/url?${params}`);
    log(`4. nearest copy: ${found.node_id} (${found.region}, ${found.distance_km} km), variant ${found.variant}`);
    $("served").textContent = `${found.node_id} (${found.region}) · ${found.variant}`;
    $("result-url").textContent = found.url;
    const img = $("result");
    img.onload = () => { img.dataset.loaded = "true"; log(`   shown: ${img.naturalWidth}×${img.naturalHeight}`); };
    img.onerror = () => fail("the image did not load from " + found.url);
    img.src = found.url;
    img.hidden = false;
    $("go").disabled = false;
  } catch (err) {
    if (err.status === 401) { minicdnAuth.setKey(""); showLogin(); }
    fail(err.message);
  }
}

function showLogin() {
  $("main").hidden = true;
  $("login").hidden = false;
}

function start() {
  if (!minicdnAuth.key()) { showLogin(); return; }
  $("login").hidden = true;
  $("main").hidden = false;
}

minicdnAuth.bindLogin($("login-form"), start);
$("logout").addEventListener("click", () => { minicdnAuth.setKey(""); showLogin(); });
$("upload-form").addEventListener("submit", upload);
start();
