// Following running actions: result changes from the service's event
// stream (GET /events, Server-Sent Events) when it has one, else by reading
// each followed request once a second. The stream is read with fetch rather
// than EventSource because EventSource cannot send an Authorization header.

import { authHeaders, slavePath } from "./api.js";

const POLL_INTERVAL_MS = 1000;
// While the stream is up, each followed request is still read this often, in
// case an event was missed (say between the request and the stream's start).
const CHECK_INTERVAL_MS = 10000;
// Reads of one request before the page stops following it (an hour of polling).
const MAX_CHECKS = 3600;
// The service sends a keepalive every 15 s: this long without a byte, the stream is dead.
const STREAM_SILENCE_MS = 45000;
// Connections in a row that may fail (no stream answered) before the page polls
// instead; a stream that was answered starts the count again.
const MAX_RECONNECTS = 5;
// The wait before the n-th reconnection in a row is n times this.
const RECONNECT_DELAY_MS = 1000;
// Events of requests not (yet) followed that are remembered, for a request
// whose events arrive before the answer that names it.
const SEEN_LIMIT = 500;
// A frame larger than this is not an event of this service: the stream is dropped.
const MAX_FRAME_CHARS = 1 << 20;

// Answers that say the service has no event stream for this page: poll instead.
const NO_STREAM = new Set([401, 403, 404, 405]);

function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function parseFrame(frame) {
  let id = null;
  let event = "message";
  const data = [];
  for (const line of frame.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) {
      continue;
    }
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) {
      value = value.slice(1);
    }
    if (field === "id") {
      id = value;
    } else if (field === "event") {
      event = value;
    } else if (field === "data") {
      data.push(value);
    }
  }
  return { id, event, data: data.join("\n") };
}

export class Follower {
  // onChange(requestid, change) is called with {state, text} as a followed
  // request changes, {error} when reading it failed, {gaveUp: true} when the
  // page stops following it; onMode(mode) with "stream", "polling" or "connecting".
  // `options` are for tests: `fetch` to read the stream with, `reconnectDelayMs`.
  constructor(api, onChange, onMode, options = {}) {
    this.api = api;
    this.onChange = onChange;
    this.onMode = onMode;
    this.fetch = options.fetch || ((...args) => fetch(...args));
    this.reconnectDelayMs = options.reconnectDelayMs ?? RECONNECT_DELAY_MS;
    this.followed = new Map();
    this.seen = new Map();
    this.mode = "connecting";
    this.lastEventId = null;
    this.started = false;
    this.streaming = false;
  }

  start() {
    this.started = true;
    this.streamWhileServed();
  }

  // A token was stored: a stream refused for want of one (or given up on) is
  // tried again with it. Nothing to do while the stream is up or being tried.
  tokenStored() {
    if (this.started && !this.streaming) {
      this.streamWhileServed();
    }
  }

  // Follow the request of `result` (a POST's answer) until it finishes.
  follow(slave, route, result) {
    const id = result.requestid;
    this.followed.set(id, { slave, route, checks: 0, timer: null });
    const early = this.seen.get(id);
    this.seen.delete(id);
    if (early && early.state >= result.state) {
      this.apply(early);
    }
    this.schedule(id);
  }

  apply(change) {
    const id = change.requestid;
    if (!this.followed.has(id)) {
      return;
    }
    this.onChange(id, { state: change.state, text: change.text });
    if (change.state >= 2) {
      clearTimeout(this.followed.get(id).timer);
      this.followed.delete(id);
    }
  }

  schedule(id) {
    const entry = this.followed.get(id);
    if (!entry) {
      return;
    }
    clearTimeout(entry.timer);
    const wait = this.mode === "stream" ? CHECK_INTERVAL_MS : POLL_INTERVAL_MS;
    entry.timer = setTimeout(() => this.poll(id), wait);
  }

  async poll(id) {
    const entry = this.followed.get(id);
    if (!entry) {
      return;
    }
    clearTimeout(entry.timer);
    entry.checks += 1;
    try {
      const result = await this.api.get(`${slavePath(entry.slave, "actions", entry.route)}?requestid=${id}`);
      this.apply({ requestid: id, state: result.state, text: result.text });
    } catch (error) {
      this.onChange(id, { error: error.message });
    }
    if (!this.followed.has(id)) {
      return;
    }
    if (entry.checks >= MAX_CHECKS) {
      this.followed.delete(id);
      this.onChange(id, { gaveUp: true });
      return;
    }
    this.schedule(id);
  }

  setMode(mode) {
    this.mode = mode;
    for (const id of this.followed.keys()) {
      this.schedule(id);
    }
    this.onMode(mode);
  }

  async streamWhileServed() {
    this.streaming = true;
    // Failures in a row: a stream that was answered (and lost later) starts the count again.
    let failures = 0;
    while (failures <= MAX_RECONNECTS) {
      const outcome = await this.readStream();
      if (outcome === "unsupported") {
        break;
      }
      failures = outcome === "connected" ? 1 : failures + 1;
      if (failures <= MAX_RECONNECTS) {
        await delay(this.reconnectDelayMs * failures);
      }
    }
    this.streaming = false;
    this.setMode("polling");
  }

  // Reads the stream until it ends: "connected" when it was answered (and
  // then lost), "lost" when it could not be had, "unsupported" when the
  // service has none for this page (or refused it: a token may help later).
  async readStream() {
    const controller = new AbortController();
    let connected = false;
    let silence = setTimeout(() => controller.abort(), STREAM_SILENCE_MS);
    const headers = { Accept: "text/event-stream", ...authHeaders() };
    if (this.lastEventId !== null) {
      headers["Last-Event-ID"] = this.lastEventId;
    }
    try {
      const response = await this.fetch("/events", { headers, signal: controller.signal, cache: "no-store" });
      const type = response.headers.get("content-type") || "";
      if (!response.ok || !type.startsWith("text/event-stream")) {
        controller.abort();
        return NO_STREAM.has(response.status) || response.ok ? "unsupported" : "lost";
      }
      connected = true;
      this.setMode("stream");
      // Catch up on whatever changed while the stream was not up.
      for (const id of [...this.followed.keys()]) {
        this.poll(id);
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) {
          break;
        }
        clearTimeout(silence);
        silence = setTimeout(() => controller.abort(), STREAM_SILENCE_MS);
        buffer += value;
        let end = buffer.search(/\r?\n\r?\n/);
        while (end >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
          this.handleFrame(parseFrame(frame));
          end = buffer.search(/\r?\n\r?\n/);
        }
        if (buffer.length > MAX_FRAME_CHARS) {
          controller.abort();
          break;
        }
      }
    } catch (error) {
      // Lost (or aborted for silence): connected again below, a bounded number of times.
    } finally {
      clearTimeout(silence);
    }
    this.setMode("connecting");
    return connected ? "connected" : "lost";
  }

  handleFrame(frame) {
    if (frame.id !== null) {
      this.lastEventId = frame.id;
    }
    if (frame.event !== "result" || !frame.data) {
      return;
    }
    let event;
    try {
      event = JSON.parse(frame.data);
    } catch (error) {
      return;
    }
    if (this.followed.has(event.requestid)) {
      this.apply(event);
      return;
    }
    this.seen.set(event.requestid, event);
    if (this.seen.size > SEEN_LIMIT) {
      this.seen.delete(this.seen.keys().next().value);
    }
  }
}
