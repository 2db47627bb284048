// svdpipe's web page: submit an image, follow the job over Server-Sent Events, play the video. No build step.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "svdpipe.apiKey";
const FINAL = new Set(["completed", "failed", "cancelled"]);
const STATUS_TEXT = { queued: "queued", in_progress: "in progress", completed: "completed", failed: "failed", cancelled: "cancelled" };

let chosen = null; // the image File to send
let watching = null; // { id, abort: AbortController, lastEventId, job, objectUrl }

// ---------------------------------------------------------------- API calls

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// The service answers every client mistake with {"error": {"message", "type", "code"}}: show its message.
async function failure(resp) {
  let message = `${resp.status} ${resp.statusText}`;
  try {
    const body = await resp.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (_) { /* not JSON: keep the status line */ }
  if (resp.status === 401) $("key-box").open = true;
  return new ApiError(resp.status, message);
}

async function api(path, options = {}) {
  const resp = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (!resp.ok) throw await failure(resp);
  return resp;
}

function describe(err) {
  if (err instanceof ApiError) {
    const what = err.status === 429 ? "The queue is full" : err.status === 401 ? "Not authorised" : "The service refused this";
    return `${what} (${err.status}): ${err.message}`;
  }
  return `Could not reach the service: ${err.message}`;
}

// Seeds go up to 2^63, past what a JavaScript number holds exactly: keep the seed as the digits the service sent.
function parseJob(text) {
  const job = JSON.parse(text);
  const seed = /"seed":\s*(\d+)/.exec(text);
  if (seed) job.seed = seed[1];
  return job;
}

function show(el, text) {
  el.textContent = text || "";
  el.hidden = !text;
}

// ---------------------------------------------------------------- the image

function choose(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) {
    show($("form-error"), `${file.name} is not an image`);
    return;
  }
  chosen = file;
  show($("form-error"), "");
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("drop-hint").hidden = true;
}

function setUpDrop() {
  const drop = $("drop");
  $("image").addEventListener("change", (e) => choose(e.target.files[0]));
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) drop.addEventListener(type, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); choose(e.dataTransfer.files[0]); });
}

// ---------------------------------------------------------------- submitting

async function submit(event) {
  event.preventDefault();
  show($("form-error"), "");
  if (!chosen) {
    show($("form-error"), "Choose an image first.");
    return;
  }
  const body = new FormData();
  body.append("image", chosen, chosen.name);
  for (const el of $("create").querySelectorAll("input[name], select[name]")) {
    if (el.type === "checkbox") {
      if (el.checked) body.append(el.name, "true"); // unchecked: the service's default (false)
    } else if (el.name !== "image" && el.value.trim() !== "") body.append(el.name, el.value.trim());
  }
  $("generate").disabled = true;
  try {
    const job = parseJob(await (await api("/v1/videos", { method: "POST", body })).text());
    watch(job);
    refreshJobs();
  } catch (err) {
    show($("form-error"), describe(err));
  } finally {
    $("generate").disabled = false;
  }
}

// ---------------------------------------------------------------- following a job (SSE over fetch)

// fetch instead of EventSource: EventSource cannot send the Authorization header.
async function follow(w) {
  while (!w.abort.signal.aborted) {
    try {
      const headers = authHeaders();
      if (w.lastEventId) headers["Last-Event-ID"] = w.lastEventId;
      const resp = await fetch(`/v1/videos/${w.id}/events`, { headers, signal: w.abort.signal });
      if (resp.status === 204) return; // we had already seen the final event
      if (!resp.ok) {
        show($("job-error"), describe(await failure(resp)));
        return;
      }
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const message = parseMessage(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (message && onMessage(w, message)) return;
        }
      }
    } catch (err) {
      if (w.abort.signal.aborted) return;
    }
    await new Promise((resolve) => setTimeout(resolve, 1000)); // dropped: resume with Last-Event-ID
  }
}

function parseMessage(block) {
  const message = { event: "message", data: "" };
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") message.event = value;
    else if (field === "data") message.data += value;
    else if (field === "id") message.id = value;
  }
  return message.data ? message : null;
}

// Returns true when the stream is over.
function onMessage(w, message) {
  if (w !== watching) return true;
  if (message.id) w.lastEventId = message.id;
  const data = parseJob(message.data);
  if (message.event === "error") {
    show($("job-error"), data.error.message);
    return true;
  }
  render(w, data);
  if (FINAL.has(data.status)) {
    if (data.status === "completed") loadVideo(w, data);
    refreshJobs();
    return true;
  }
  return false;
}

function watch(job) {
  if (watching) {
    watching.abort.abort();
    if (watching.objectUrl) URL.revokeObjectURL(watching.objectUrl);
  }
  const w = { id: job.id, abort: new AbortController(), lastEventId: null, job: null, objectUrl: null };
  watching = w;
  $("job").hidden = false;
  $("job-id").textContent = job.id;
  $("result").hidden = true;
  show($("job-error"), "");
  render(w, job);
  follow(w);
}

// ---------------------------------------------------------------- showing a job

function seconds(s) {
  if (s < 60) return `${s.toFixed(1)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

function render(w, job) {
  w.job = job;
  const status = $("status");
  status.textContent = STATUS_TEXT[job.status] || job.status;
  status.className = `badge ${job.status}`;
  $("queue").textContent = job.status === "queued" && job.queue_position ? `position ${job.queue_position} in the queue` : "";
  $("progress").value = job.progress;
  $("progress-text").textContent = `${job.progress} %`;
  // A long video is made clip by clip: say which one (the progress bar counts every clip's steps).
  const clips = job.num_clips || 1;
  $("clip").textContent = clips > 1 && job.clip ? `clip ${job.clip} of ${clips}` : clips > 1 ? `${clips} clips` : "";
  $("cancel").hidden = FINAL.has(job.status);
  if (job.status === "failed") show($("job-error"), `Failed: ${job.error || "unknown error"}`);
  tick();
}

// Elapsed time and the estimate of time left, from the job's own timestamps (refreshed between events too).
function tick() {
  const job = watching && watching.job;
  if (!job) return;
  const now = Date.now() / 1000;
  const end = job.completed_at || now;
  $("elapsed").textContent = `elapsed ${seconds(Math.max(0, end - job.created_at))}`;
  let eta = "";
  if (job.status === "in_progress" && job.started_at && job.progress > 0) {
    const running = Math.max(0, now - job.started_at);
    eta = `about ${seconds((running * (100 - job.progress)) / job.progress)} left`;
  }
  $("eta").textContent = eta;
}

async function loadVideo(w, job) {
  try {
    const blob = await (await api(`/v1/videos/${job.id}/content`)).blob();
    if (w !== watching) return;
    w.objectUrl = URL.createObjectURL(blob);
    const isGif = job.output_format === "gif";
    $("video").hidden = isGif;
    $("gif").hidden = !isGif;
    if (isGif) $("gif").src = w.objectUrl;
    else $("video").src = w.objectUrl;
    $("download").href = w.objectUrl;
    $("download").download = `${job.id}.${job.output_format}`;
    $("seed").textContent = String(job.seed);
    $("result").hidden = false;
  } catch (err) {
    show($("job-error"), describe(err));
  }
}

async function cancel() {
  if (!watching) return;
  try {
    const job = parseJob(await (await api(`/v1/videos/${watching.id}/cancel`, { method: "POST" })).text());
    render(watching, job);
    refreshJobs();
  } catch (err) {
    show($("job-error"), describe(err));
  }
}

// ---------------------------------------------------------------- recent jobs

async function refreshJobs() {
  let list;
  try {
    list = await (await api("/v1/videos?limit=10")).json();
  } catch (err) {
    show($("jobs-error"), describe(err));
    return;
  }
  show($("jobs-error"), "");
  const items = list.data.map((job) => {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    const badge = document.createElement("span");
    badge.className = `badge ${job.status}`;
    const clip = job.num_clips > 1 && job.clip ? ` · clip ${job.clip}/${job.num_clips}` : "";
    badge.textContent = job.status === "in_progress" ? `${job.progress} %${clip}` : STATUS_TEXT[job.status];
    const id = document.createElement("code");
    id.textContent = job.id;
    const when = document.createElement("span");
    when.className = "when";
    when.textContent = new Date(job.created_at * 1000).toLocaleTimeString();
    button.append(badge, id, when);
    button.addEventListener("click", () => watch(job)); // its stream brings the exact seed
    li.append(button);
    return li;
  });
  $("jobs").replaceChildren(...items);
  if (!items.length) $("jobs").innerHTML = '<li class="hint">No jobs yet.</li>';
}

// ---------------------------------------------------------------- start

// The deployment's limit on clips per video (a request over it gets 400): shown beside the input, and its max.
async function loadLimits() {
  try {
    const health = await (await fetch("/v1/health")).json();
    if (health.max_clips) {
      $("num-clips").max = String(health.max_clips);
      $("clips-limit").textContent = `(max ${health.max_clips})`;
    }
  } catch (_) { /* keep the schema's bound; the service still checks */ }
}

function start() {
  const key = $("api-key");
  key.value = sessionStorage.getItem(KEY_STORAGE) || "";
  key.addEventListener("input", () => {
    if (key.value) sessionStorage.setItem(KEY_STORAGE, key.value);
    else sessionStorage.removeItem(KEY_STORAGE);
  });
  key.addEventListener("change", refreshJobs);
  // mp4 (H.264) where this browser plays it, else webm (VP9): the video must play inline here.
  if (!document.createElement("video").canPlayType('video/mp4; codecs="avc1.42E01E"')) {
    $("create").elements.output_format.value = "webm";
  }
  setUpDrop();
  loadLimits();
  $("create").addEventListener("submit", submit);
  $("cancel").addEventListener("click", cancel);
  setInterval(tick, 250);
  setInterval(() => { if (!document.hidden) refreshJobs(); }, 5000);
  refreshJobs();
}

start();
