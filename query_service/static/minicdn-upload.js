// minicdn browser upload module (ES module, no dependencies), served at /assets/minicdn-upload.js.
//
// An app's backend asks for the upload with its API key (POST /v1/uploads) and hands the page only the
// ticket it got back. This module PUTs the file straight to the storage node named in the ticket, with
// progress events (XMLHttpRequest: fetch has no upload progress), retries the PUT where that is safe,
// then polls the ticket's signed_status_url (no API key in the browser) until the image is ready.
// It resolves with the image's status document, or rejects with an UploadError carrying the API code.
// The contract is in docs/browser.md.

/**
 * What `POST /v1/uploads` answers (docs/api.md); the app's backend passes it to the page as is.
 * @typedef {object} UploadTicket
 * @property {string} image_id
 * @property {string} upload_url  signed, single-use PUT URL on the node the upload was placed on
 * @property {string} [upload_method]  always "PUT"
 * @property {string} [expires_at]  RFC 3339; the upload URL stops working then
 * @property {number} [max_bytes]  the node refuses a larger body (413 too_large)
 * @property {string} [node_id]
 * @property {string} [region]
 * @property {string} [status]  "requested"
 * @property {string} [status_url]  GET /v1/images/{id}: needs the API key for a private image
 * @property {string} [signed_status_url]  the same, signed for this image: readable without a key
 */

/**
 * @typedef {object} Replica
 * @property {string} node_id
 * @property {string} region
 * @property {"ok"|"pending"|"missing"|"corrupt"} state
 * @property {string|null} verified_at
 */

/**
 * The image's status document (`GET /v1/images/{id}`, docs/api.md).
 * @typedef {object} Image
 * @property {string} image_id
 * @property {"requested"|"uploaded"|"processing"|"ready"|"rejected"|"quarantined"|"deleted"} status
 * @property {string|null} reason
 * @property {"public"|"private"} visibility
 * @property {string|null} format
 * @property {number|null} width
 * @property {number|null} height
 * @property {number|null} bytes
 * @property {string|null} sha256
 * @property {string|null} duplicate_of
 * @property {Replica[]} replicas
 */

/**
 * The node's answer to a successful PUT.
 * @typedef {object} Stored
 * @property {string} image_id
 * @property {string} sha256
 * @property {number} bytes
 * @property {"uploaded"} status
 * @property {string|null} requestId  the X-Request-Id of the PUT, for the logs
 */

/**
 * Detail of a `progress` event.
 * @typedef {object} ProgressDetail
 * @property {number} loaded  bytes sent in this attempt
 * @property {number} total  bytes to send
 * @property {number} attempt  1 for the first PUT, 2 for its first retry...
 */

/**
 * Detail of a `status` event: fired when the status (or a replica's state) changes.
 * @typedef {object} StatusDetail
 * @property {Image["status"]} status
 * @property {Image|null} image  null before the first poll ("requested", "uploaded")
 * @property {Stored|null} stored  the node's answer, once the PUT succeeded
 */

/**
 * Detail of a `retry` event: a PUT (or a poll) failed in a way that is safe to retry.
 * @typedef {object} RetryDetail
 * @property {"put"|"poll"} phase
 * @property {number} attempt  the attempt that failed
 * @property {number} delayMs  wait before the next one
 * @property {UploadError} error
 */

/**
 * @typedef {object} UploadOptions
 * @property {(detail: ProgressDetail) => void} [onProgress]
 * @property {(detail: StatusDetail) => void} [onStatus]
 * @property {(detail: RetryDetail) => void} [onRetry]
 * @property {AbortSignal} [signal]  aborting rejects with code "aborted"
 * @property {number} [retries]  PUT retries after a network error, 408, 502, 503 or 504 (default 3)
 * @property {number} [backoffMs]  first retry delay, doubled each time, with jitter (default 500)
 * @property {number} [maxBackoffMs]  (default 8000)
 * @property {number} [pollIntervalMs]  (default 500)
 * @property {number} [timeoutMs]  how long to wait for processing after the PUT (default 120000)
 * @property {number} [waitForReplicasMs]  after "ready", keep polling up to this long until every
 *   replica is "ok" (default 0: resolve at "ready"; the image is served from the copies it has)
 * @property {(imageId: string) => Promise<Image>} [getStatus]  poll through the app's own backend
 *   instead of the ticket's signed_status_url
 */

const RETRY_STATUSES = [0, 408, 502, 503, 504]; // 0: the request never got an answer
const FINAL_FAILURES = ["rejected", "quarantined", "deleted", "expired"];

/** A refused or failed upload. `code` is the API's error code (docs/api.md) or one listed below. */
export class UploadError extends Error {
  /**
   * @param {string} code  API code (`too_large`, `unsupported_type`, `expired`, ...), an outcome of
   *   processing (`rejected`, `quarantined`, `deleted`), or `network_error`, `timeout`, `aborted`,
   *   `bad_ticket`, `http_error` (an answer without a minicdn error body)
   * @param {number} status  HTTP status of the answer that carried it (0: no answer, or processing)
   * @param {string} message
   * @param {{reason?: string|null, image?: Image|null, requestId?: string|null}} [extra]
   */
  constructor(code, status, message, extra = {}) {
    super(message);
    this.name = "UploadError";
    /** @type {string} */ this.code = code;
    /** @type {number} */ this.status = status;
    /** @type {string|null} the image's reason, for rejected or quarantined images */
    this.reason = extra.reason ?? null;
    /** @type {Image|null} the last status document seen */
    this.image = extra.image ?? null;
    /** @type {string|null} */ this.requestId = extra.requestId ?? null;
    /** @type {number|null} the answer's Retry-After, in milliseconds */
    this.retryAfterMs = null;
  }
}

/**
 * @param {number} status
 * @param {string} text  the response body
 * @param {string|null} requestId
 * @returns {UploadError}
 */
function errorFromAnswer(status, text, requestId) {
  try {
    const body = JSON.parse(text);
    if (body && body.error && typeof body.error.code === "string") {
      return new UploadError(body.error.code, status, String(body.error.message || ""), { requestId });
    }
  } catch (_) { /* not JSON: a proxy's page, say */ }
  return new UploadError(status === 0 ? "network_error" : "http_error", status, `HTTP ${status}`, { requestId });
}

/**
 * Whole seconds of a Retry-After header, as milliseconds (null when absent or a date).
 * @param {string|null} value
 * @returns {number|null}
 */
function retryAfterMs(value) {
  const s = value === null ? NaN : Number(value);
  return Number.isFinite(s) && s >= 0 ? s * 1000 : null;
}

/**
 * Exponential backoff with full jitter: spreads the retries of many browsers hit by the same outage.
 * @param {number} attempt  1 for the first retry
 * @param {number} base
 * @param {number} cap
 */
function backoff(attempt, base, cap) {
  return Math.round(Math.random() * Math.min(cap, base * 2 ** (attempt - 1)));
}

/**
 * @param {number} ms
 * @param {AbortSignal|undefined} signal
 * @returns {Promise<void>}
 */
function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) { reject(aborted()); return; }
    const timer = setTimeout(() => { signal && signal.removeEventListener("abort", stop); resolve(); }, ms);
    const stop = () => { clearTimeout(timer); reject(aborted()); };
    if (signal) signal.addEventListener("abort", stop, { once: true });
  });
}

function aborted() {
  return new UploadError("aborted", 0, "the upload was aborted");
}

/** @param {Replica[]|undefined} replicas */
function replicaKey(replicas) {
  return (replicas || []).map((r) => `${r.node_id}:${r.state}`).sort().join(",");
}

/**
 * One upload of one file with one ticket. Events (CustomEvent, data in `detail`): `progress`
 * ({@link ProgressDetail}), `status` ({@link StatusDetail}), `retry` ({@link RetryDetail}).
 */
export class MinicdnUpload extends EventTarget {
  /**
   * @param {UploadTicket} ticket
   * @param {Blob} file  a File from an <input type=file>, or any Blob
   * @param {UploadOptions} [options]
   */
  constructor(ticket, file, options = {}) {
    super();
    if (!ticket || typeof ticket.upload_url !== "string" || typeof ticket.image_id !== "string") {
      throw new UploadError("bad_ticket", 0, "the ticket has no image_id or upload_url (pass the JSON of POST /v1/uploads)");
    }
    this.ticket = ticket;
    this.file = file;
    this.options = options;
    /** @type {Image["status"]} */ this.status = "requested";
    /** @type {Image|null} */ this.image = null;
    /** @type {Stored|null} */ this.stored = null;
    /** @type {Promise<Image>|null} */ this._promise = null;
    /** @type {XMLHttpRequest|null} */ this._xhr = null;
    /** @type {string} */ this._seen = "";
    /** @type {number|null} when a poll first saw "ready" */ this._readyAt = null;
    if (options.onProgress) this.addEventListener("progress", (ev) => options.onProgress?.(detail(ev)));
    if (options.onStatus) this.addEventListener("status", (ev) => options.onStatus?.(detail(ev)));
    if (options.onRetry) this.addEventListener("retry", (ev) => options.onRetry?.(detail(ev)));
  }

  /**
   * Run the upload (once; later calls return the same promise).
   * @returns {Promise<Image>} the image once it is ready
   */
  start() {
    if (!this._promise) this._promise = this._run();
    return this._promise;
  }

  /** @returns {Promise<Image>} */
  async _run() {
    const signal = this.options.signal;
    if (signal && signal.aborted) throw aborted();
    const onAbort = () => { if (this._xhr) this._xhr.abort(); };
    if (signal) signal.addEventListener("abort", onAbort, { once: true });
    try {
      this._emitStatus("requested", null);
      this.stored = await this._putWithRetries();
      this._emitStatus("uploaded", null);
      return await this._poll();
    } finally {
      if (signal) signal.removeEventListener("abort", onAbort);
    }
  }

  /** @returns {Promise<Stored>} */
  async _putWithRetries() {
    const o = this.options;
    const retries = o.retries ?? 3;
    for (let attempt = 1; ; attempt++) {
      try {
        return await this._put(attempt);
      } catch (err) {
        if (!(err instanceof UploadError)) throw err;
        // The URL is single-use: a retry answered 409 means an earlier attempt did arrive (its 201
        // was lost), so the upload went through. Polling tells which status it reached.
        if (attempt > 1 && err.code === "already_uploaded") {
          return { image_id: this.ticket.image_id, sha256: "", bytes: this.file.size, status: "uploaded", requestId: err.requestId };
        }
        if (err.code === "aborted" || !RETRY_STATUSES.includes(err.status) || attempt > retries) throw err;
        const delayMs = Math.max(backoff(attempt, o.backoffMs ?? 500, o.maxBackoffMs ?? 8000), err.retryAfterMs ?? 0);
        this._emit("retry", { phase: "put", attempt, delayMs, error: err });
        await sleep(delayMs, o.signal);
      }
    }
  }

  /**
   * @param {number} attempt
   * @returns {Promise<Stored>}
   */
  _put(attempt) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      this._xhr = xhr;
      const total = this.file.size;
      xhr.open(this.ticket.upload_method || "PUT", this.ticket.upload_url);
      // Informative only: the node decides the type from the bytes.
      xhr.setRequestHeader("Content-Type", this.file.type || "application/octet-stream");
      xhr.upload.onprogress = (ev) => {
        this._emit("progress", { loaded: ev.loaded, total: ev.lengthComputable ? ev.total : total, attempt });
      };
      xhr.onload = () => {
        this._xhr = null;
        const requestId = xhr.getResponseHeader("X-Request-Id");
        if (xhr.status === 201) {
          let body = null;
          try { body = JSON.parse(xhr.responseText); } catch (_) { body = null; }
          this._emit("progress", { loaded: total, total, attempt });
          resolve({ ...(body || { image_id: this.ticket.image_id, sha256: "", bytes: total, status: "uploaded" }), requestId });
          return;
        }
        const err = errorFromAnswer(xhr.status, xhr.responseText, requestId);
        err.retryAfterMs = retryAfterMs(xhr.getResponseHeader("Retry-After"));
        reject(err);
      };
      xhr.onerror = () => { this._xhr = null; reject(new UploadError("network_error", 0, "the storage node could not be reached")); };
      xhr.ontimeout = xhr.onerror;
      xhr.onabort = () => { this._xhr = null; reject(aborted()); };
      xhr.send(this.file);
    });
  }

  /** @returns {Promise<Image>} */
  async _poll() {
    const o = this.options;
    const started = Date.now();
    const deadline = started + (o.timeoutMs ?? 120000);
    const interval = o.pollIntervalMs ?? 500;
    let failures = 0;
    for (;;) {
      /** @type {Image|null} */
      let image = null;
      try {
        image = await this._fetchStatus();
        failures = 0;
      } catch (err) {
        if (!(err instanceof UploadError)) throw err;
        // An outage or an overloaded query service is waited out; a refusal (403 expired, 404) is final.
        if (err.code === "aborted" || !(RETRY_STATUSES.includes(err.status) || err.status === 429)) throw err;
        failures++;
        const delayMs = Math.max(backoff(failures, interval, o.maxBackoffMs ?? 8000), err.retryAfterMs ?? 0);
        this._emit("retry", { phase: "poll", attempt: failures, delayMs, error: err });
        if (Date.now() + delayMs > deadline) throw new UploadError("timeout", 0, "the status could not be read in time", { image: this.image });
        await sleep(delayMs, o.signal);
        continue;
      }
      this.image = image;
      this._emitStatus(image.status, image);
      if (FINAL_FAILURES.includes(image.status)) {
        const why = image.reason ? `: ${image.reason}` : "";
        throw new UploadError(image.status, 0, `the image was ${image.status}${why}`, { reason: image.reason, image });
      }
      if (image.status === "ready") {
        if (this._readyAt === null) this._readyAt = Date.now();
        const replicated = image.replicas.length > 0 && image.replicas.every((r) => r.state === "ok");
        const waited = Date.now() - this._readyAt >= (o.waitForReplicasMs ?? 0);
        if (replicated || waited || Date.now() >= deadline) return image;
      }
      if (Date.now() >= deadline) {
        throw new UploadError("timeout", 0, `the image is still ${image.status}`, { image });
      }
      await sleep(interval, o.signal);
    }
  }

  /** @returns {Promise<Image>} */
  async _fetchStatus() {
    const id = this.ticket.image_id;
    if (this.options.getStatus) return this.options.getStatus(id);
    // A ticket without the signed URL (an older query service) still works for public images.
    const url = this.ticket.signed_status_url || this.ticket.status_url;
    if (!url) throw new UploadError("bad_ticket", 0, "the ticket has no status URL: pass options.getStatus");
    let resp;
    try {
      resp = await fetch(url, { cache: "no-store", credentials: "omit", signal: this.options.signal });
    } catch (err) {
      if (this.options.signal && this.options.signal.aborted) throw aborted();
      throw new UploadError("network_error", 0, "the query service could not be reached");
    }
    const text = await resp.text();
    if (!resp.ok) {
      const err = errorFromAnswer(resp.status, text, resp.headers.get("X-Request-Id"));
      err.retryAfterMs = retryAfterMs(resp.headers.get("Retry-After"));
      throw err;
    }
    return /** @type {Image} */ (JSON.parse(text));
  }

  /**
   * @param {Image["status"]} status
   * @param {Image|null} image
   */
  _emitStatus(status, image) {
    const seen = `${status}|${replicaKey(image ? image.replicas : undefined)}`;
    if (seen === this._seen) return;
    this._seen = seen;
    this.status = status;
    this._emit("status", { status, image, stored: this.stored });
  }

  /**
   * @param {"progress"|"status"|"retry"} type
   * @param {ProgressDetail|StatusDetail|RetryDetail} data
   */
  _emit(type, data) {
    this.dispatchEvent(new CustomEvent(type, { detail: data }));
  }
}

/** @param {Event} ev */
function detail(ev) {
  return /** @type {CustomEvent} */ (ev).detail;
}

/**
 * Upload `file` with `ticket` and wait until the image is ready.
 * @param {UploadTicket} ticket  the JSON of POST /v1/uploads, from the app's backend
 * @param {Blob} file
 * @param {UploadOptions} [options]
 * @returns {Promise<Image>}
 */
export function upload(ticket, file, options = {}) {
  return new MinicdnUpload(ticket, file, options).start();
}
