// The upload demo: the steps of an upload, in the browser. The page asks the query service for an
// upload ticket with the API key (an app's backend would do this step), then hands the ticket to the
// browser upload module, which PUTs the file to the node with progress, polls the signed status URL
// while the node processes the image and the other regions copy it, and the page shows the image
// from its nearest node.
import { upload } from "./minicdn-upload.js";

const $ = (id) => document.getElementById(id);
const REPLICA_WAIT_MS = 60000; // show every region's copy when it comes quickly; else go on once ready

function log(text) {
  $("log").append(el("li", { text: `${new Date().toLocaleTimeString()}  ${text}` }));
}

function fail(message) {
  $("error").textContent = message;
  log("error: " + message);
  $("go").disabled = false;
}

function showProgress({ loaded, total }) {
  const p = total > 0 ? Math.round((loaded / total) * 100) : 0;
  $("progress").value = p;
  $("percent").textContent = p + " %";
}

function showStatus({ status, image, stored }) {
  $("status").textContent = status;
  if (status === "uploaded" && stored) {
    const sha = stored.sha256 ? `, sha256 ${stored.sha256.slice(0, 12)}…` : "";
    log(`   stored: ${humanBytes(stored.bytes)}${sha}, request ${stored.requestId}`);
    log("3. waiting for processing and for the other regions to copy it");
  }
  if (image) {
    $("replicas").textContent = (image.replicas || []).map((r) => `${r.region}: ${r.state}`).join(" · ") || "–";
  }
}

async function submit(ev) {
  ev.preventDefault();
  const file = $("file").files[0];
  if (!file) return;
  $("go").disabled = true;
  $("error").textContent = "";
  $("log").replaceChildren();
  $("result").hidden = true;
  $("progress").value = 0;
  try {
    log(`1. asking for an upload ticket for ${file.name} (${humanBytes(file.size)})`);
    const ticket = await minicdnAuth.api("POST", "/v1/uploads", {
      filename: file.name, size: file.size, content_type: file.type || undefined,
      visibility: $("private").checked ? "private" : "public",
    });
    $("image-id").textContent = ticket.image_id;
    $("placed").textContent = `${ticket.node_id} (${ticket.region})`;
    log(`2. PUT to ${ticket.node_id} in ${ticket.region}`);
    const image = await upload(ticket, file, {
      onProgress: showProgress,
      onStatus: showStatus,
      onRetry: ({ phase, attempt, delayMs, error }) => log(`   ${phase} attempt ${attempt} failed (${error.code}); again in ${delayMs} ms`),
      waitForReplicasMs: REPLICA_WAIT_MS,
      timeoutMs: 180000,
    });
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
    fail(err.code ? `${err.code}: ${err.message}` : err.message);
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
$("upload-form").addEventListener("submit", submit);
start();
