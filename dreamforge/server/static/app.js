// DreamForge page: one more client of the public v1 API. Every text from the API goes into the
// page through textContent, never as HTML.

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "dreamforge.token";
const ACTIVE = new Set(["queued", "running"]);
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const PAGE = 24;

const needsToken = document.body.dataset.auth === "token";
let token = sessionStorage.getItem(TOKEN_KEY);
let feed = null;          // AbortController of the gallery's event stream
let jobView = null;       // AbortController of the open job page's stream
let nextCursor = null;
const cards = new Map();  // job id -> {job, li}
const fetching = new Set();

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code || "error";
    this.details = Array.isArray(err.details) ? err.details : [];
  }
}

function headers(extra = {}) {
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, signal, cache: "no-store", headers: headers({ Accept: "application/json" }) };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const data = await r.json().catch(() => null);
  if (r.status === 401) signedOut();
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

// Server-Sent Events over fetch (EventSource can't send Authorization). Reconnects with
// Last-Event-ID unless `until` says the stream is done.
async function follow(path, onEvent, { signal, onState = () => {}, until = () => false }) {
  let last = null;
  let wait = 500;
  while (!signal.aborted) {
    try {
      const h = headers({ Accept: "text/event-stream" });
      if (last !== null) h["Last-Event-ID"] = last;
      const r = await fetch(path, { headers: h, signal, cache: "no-store" });
      if (r.status === 401) return signedOut();
      if (!r.ok) throw new ApiError(r.status, await r.json().catch(() => null));
      onState("live");
      wait = 500;
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf = (buf + value).replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const ev = parseBlock(block);
          if (ev.id !== null) last = ev.id;
          if (ev.data !== null) {
            onEvent(ev);
            if (until(ev)) return;
          }
        }
      }
    } catch (e) {
      if (signal.aborted) return;
    }
    onState("reconnecting");
    await new Promise((ok) => setTimeout(ok, wait));
    wait = Math.min(wait * 2, 10000);
  }
}

function parseBlock(block) {
  const ev = { id: null, event: "message", data: null };
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const i = line.indexOf(":");
    const name = i < 0 ? line : line.slice(0, i);
    let value = i < 0 ? "" : line.slice(i + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "id") ev.id = value;
    else if (name === "event") ev.event = value;
    else if (name === "data") data.push(value);
  }
  if (data.length) {
    try { ev.data = JSON.parse(data.join("\n")); } catch { ev.data = null; }
  }
  return ev;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

function imageUrl(url) {
  const u = new URL(url, location.origin);
  u.searchParams.set("redirect", "false"); // S3's presigned URL would be another origin
  return u.pathname + u.search;
}

// Images go through fetch when a token is set (an <img> can't send Authorization).
async function loadImage(img, url) {
  url = imageUrl(url);
  if (!token) {
    img.src = url;
    return url;
  }
  const r = await fetch(url, { headers: headers() });
  if (!r.ok) throw new ApiError(r.status, null);
  const blobUrl = URL.createObjectURL(await r.blob());
  img.addEventListener("load", () => img.dataset.keep || URL.revokeObjectURL(blobUrl), { once: true });
  img.src = blobUrl;
  return blobUrl;
}

const lazy = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    const img = entry.target;
    lazy.unobserve(img);
    img.addEventListener("load", () => performance.mark("df:thumb"), { once: true });
    loadImage(img, img.dataset.src).catch(() => img.replaceWith(el("span", { class: "muted", text: "image unavailable" })));
  }
}, { rootMargin: "200px" });

function toast(text) {
  const t = $("toast");
  t.textContent = text;
  t.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove("show"), 3000);
}

// ---------- gallery ----------

function progressOf(job) {
  const p = (job.steps[0] && job.steps[0].progress) || { current: 0, total: job.params.steps || 1 };
  return { current: p.current, total: Math.max(1, p.total) };
}

function cardFor(job) {
  const title = job.params.prompt || job.type;
  const link = el("a", { class: "prompt", href: `#/jobs/${job.id}`, text: title });
  const thumb = el("a", { class: "frame", href: `#/jobs/${job.id}`, tabindex: "-1", "aria-hidden": "true" });
  const cancel = el("button", { type: "button", class: "cancel", text: "Cancel" });
  cancel.setAttribute("aria-label", `Cancel job: ${title.slice(0, 80)}`);
  cancel.addEventListener("click", () => cancelJob(job.id, cancel));
  const li = el("li", { class: "job", "data-id": job.id }, thumb,
    el("div", { class: "meta" }, link,
      el("p", { class: "line" }, el("span", { class: "badge" }), el("span", { class: "muted size" })),
      el("progress", { "aria-label": `Progress: ${title.slice(0, 80)}` }),
      el("p", { class: "error" }), cancel));
  return li;
}

function renderCard(entry) {
  const { job, li } = entry;
  li.dataset.status = job.status;
  li.querySelector(".badge").textContent = job.status;
  const n = job.params.count || 1;
  li.querySelector(".size").textContent = `${job.params.width}×${job.params.height} · ${job.params.steps} steps` +
    (n > 1 ? ` · ${job.summary.completed}/${n} images` : "") + (job.params.scheduler ? ` · ${job.params.scheduler}` : "");
  const bar = li.querySelector("progress");
  const p = progressOf(job);
  bar.max = p.total;
  bar.value = job.status === "succeeded" ? p.total : p.current;
  bar.hidden = !ACTIVE.has(job.status);
  li.querySelector(".error").textContent = job.error ? `${job.error.code}: ${job.error.message}` : "";
  li.querySelector(".cancel").hidden = !ACTIVE.has(job.status);
  const art = job.artifacts[0];
  const frame = li.querySelector(".frame");
  if (art && art.thumbnail_url && !frame.querySelector("img")) {
    const img = el("img", { alt: "", width: "256", height: "256", decoding: "async" });
    img.dataset.src = art.thumbnail_url;
    frame.replaceChildren(img);
    lazy.observe(img);
  } else if (!art && !frame.firstChild) {
    frame.append(el("span", { class: "muted", text: job.status }));
  } else if (!art) {
    frame.firstChild.textContent = job.status;
  }
}

function upsert(job, { top = false } = {}) {
  let entry = cards.get(job.id);
  if (entry) {
    entry.job = job;
  } else {
    entry = { job, li: cardFor(job) };
    cards.set(job.id, entry);
    const list = $("gallery");
    const after = top ? null : [...list.children].find((li) => cards.get(li.dataset.id).job.created_at < job.created_at);
    if (top || after) list.insertBefore(entry.li, top ? list.firstChild : after);
    else list.append(entry.li);
  }
  renderCard(entry);
  $("gallery-empty").hidden = cards.size > 0;
  return entry;
}

async function refresh(id) {
  if (fetching.has(id)) return;
  fetching.add(id);
  try {
    const job = await api(`/v1/jobs/${encodeURIComponent(id)}`);
    const oldest = [...cards.values()].reduce((m, e) => (m && m < e.job.created_at ? m : e.job.created_at), null);
    if (cards.has(id) || !nextCursor || !oldest || job.created_at >= oldest) upsert(job);
  } catch (e) {
    /* gone (pruned) or signed out: nothing to show */
  } finally {
    fetching.delete(id);
  }
}

function onFeedEvent({ data: e }) {
  if (!e || !e.job_id) return;
  const entry = cards.get(e.job_id);
  if (!entry) {
    if (e.kind === "status" && e.payload.status === "queued") refresh(e.job_id);
    return;
  }
  const job = entry.job;
  if (e.kind === "progress" && job.steps[0]) {
    job.steps[0].progress = { current: e.payload.current, total: e.payload.total };
    if (job.status === "queued") job.status = "running";
    renderCard(entry);
  } else if (e.kind === "status") {
    job.status = e.payload.status;
    renderCard(entry);
    if (TERMINAL.has(job.status)) refresh(job.id); // artifacts, error
  }
}

async function loadPage() {
  const q = new URLSearchParams({ limit: String(PAGE) });
  if (nextCursor) q.set("cursor", nextCursor);
  const page = await api(`/v1/jobs?${q}`);
  for (const job of page.jobs) upsert(job);
  nextCursor = page.next_cursor;
  $("more").hidden = !nextCursor;
  $("gallery-empty").hidden = cards.size > 0;
}

function startFeed() {
  if (feed) feed.abort();
  feed = new AbortController();
  follow("/v1/events", onFeedEvent, {
    signal: feed.signal,
    onState: (s) => { $("live-state").textContent = s === "live" ? "● live" : "reconnecting…"; },
  });
}

async function cancelJob(id, button) {
  if (button) button.disabled = true;
  try {
    const job = await api(`/v1/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" });
    if (cards.has(id)) upsert(job);
    toast("Cancel requested");
    return job;
  } catch (e) {
    toast(`Cancel failed: ${e.message}`);
    return null;
  } finally {
    if (button) button.disabled = false;
  }
}

// ---------- submit form ----------

const form = $("submit-form");
const FIELDS = ["prompt", "negative_prompt", "width", "height", "steps", "guidance", "seed", "count", "scheduler",
  "format"];
const RULES = {
  prompt: "prompt is required (at most 2000 characters)",
  width: "width must be 64-2048 and a multiple of 8",
  height: "height must be 64-2048 and a multiple of 8",
  steps: "steps must be a whole number from 1 to 150",
  guidance: "guidance must be a number from 0 to 30",
  seed: "seed must be empty (random) or a whole number from 0 to 4294967295",
  count: "images must be a whole number from 1 to 8",
};

function custom() {
  return form.elements.size.value === "custom";
}

function showError(field, message) {
  const slot = FIELDS.includes(field) ? $(`e-${field}`) : null;
  if (!slot) {
    $("e-form").textContent = field ? `${field}: ${message}` : message;
    return null;
  }
  slot.textContent = message;
  const input = form.elements[field];
  input.setAttribute("aria-invalid", "true");
  return input;
}

function clearErrors() {
  for (const f of FIELDS) {
    $(`e-${f}`).textContent = "";
    form.elements[f].removeAttribute("aria-invalid");
  }
  $("e-form").textContent = "";
}

function readForm() {
  const f = form.elements;
  const [w, h] = custom() ? [f.width.value, f.height.value] : f.size.value.split("x");
  return {
    type: "generate",
    prompt: f.prompt.value,
    negative_prompt: f.negative_prompt.value || null,
    width: Number(w),
    height: Number(h),
    steps: Number(f.steps.value),
    guidance: Number(f.guidance.value),
    seed: f.seed.value === "" && !f.seed.validity.badInput ? null : Number(f.seed.value),
    count: Number(f.count.value),
    scheduler: f.scheduler.value || null,
    format: f.format.value,
  };
}

function validate() {
  const bad = [];
  for (const [field, message] of Object.entries(RULES)) {
    const input = form.elements[field];
    if ((field === "width" || field === "height") && !custom()) continue;
    if (!input.checkValidity() || (input.required && input.value.trim() === "" && field !== "prompt")) {
      bad.push(showError(field, message));
    }
  }
  return bad;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearErrors();
  const bad = validate();
  if (bad.length) {
    bad[0].focus();
    return;
  }
  const button = $("submit");
  button.disabled = true;
  try {
    const job = await api("/v1/jobs", { method: "POST", body: readForm() });
    upsert(job, { top: true });
    toast("Job submitted");
  } catch (e) {
    const inputs = e.details.map((d) => showError(d.field, d.message)).filter(Boolean);
    if (!e.details.length) showError(null, e.message);
    else if (!inputs.length) $("e-form").textContent = e.message;
    if (inputs.length) inputs[0].focus();
  } finally {
    button.disabled = false;
  }
});

form.elements.size.addEventListener("change", () => {
  for (const node of form.querySelectorAll("[data-custom]")) node.hidden = !custom();
  if (!custom()) return;
  const [w, h] = form.elements.size.options[0].value.split("x");
  form.elements.width.value ||= w;
  form.elements.height.value ||= h;
});

$("more").addEventListener("click", () => loadPage().catch((e) => toast(e.message)));

// ---------- one job ----------

function sq(s) {
  return `'${String(s).replace(/'/g, "'\\''")}'`;
}

function requestOf(params, keepSeed) {
  const body = { ...params };
  if (!keepSeed) body.seed = null;
  return body;
}

function dfCommand(p) {
  const parts = ["df generate", sq(p.prompt)];
  if (p.negative_prompt) parts.push("--negative-prompt", sq(p.negative_prompt));
  parts.push("--width", p.width, "--height", p.height, "--steps", p.steps, "--guidance", p.guidance);
  if (p.seed !== null && p.seed !== undefined) parts.push("--seed", p.seed);
  if (p.count > 1) parts.push("--count", p.count);
  if (p.scheduler) parts.push("--scheduler", p.scheduler);
  parts.push("--format", p.format, "--wait");
  return parts.join(" ");
}

function curlCommand(p) {
  const body = Object.fromEntries(Object.entries(p).filter(([, v]) => v !== null));
  const auth = needsToken ? ` -H "Authorization: Bearer $DF_API_TOKEN"` : "";
  return `curl -sS ${location.origin}/v1/jobs -H 'Content-Type: application/json'${auth} -d ${sq(JSON.stringify(body))}`;
}

function fillList(dl, rows) {
  dl.replaceChildren(...rows.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })]));
}

function seconds(a, b) {
  return a && b ? `${((Date.parse(b) - Date.parse(a)) / 1000).toFixed(2)} s` : null;
}

const open = { job: null, timings: null };

function renderJob(job) {
  open.job = job;
  const p = job.params;
  $("job-title").textContent = `Job ${job.id.slice(0, 8)}`;
  $("job-status").textContent = job.status;
  $("job-status").dataset.status = job.status;
  const bar = $("job-progress");
  const pr = progressOf(job);
  bar.max = pr.total;
  bar.value = job.status === "succeeded" ? pr.total : pr.current;
  bar.hidden = !ACTIVE.has(job.status);
  $("job-error").textContent = job.error ? `${job.error.code}: ${job.error.message}` : "";
  $("job-cancel").hidden = !ACTIVE.has(job.status);
  $("job-retry").hidden = !(job.status === "failed" || job.status === "canceled");
  const art = job.artifacts[0];
  const rec = job.record || {};
  fillList($("job-params"), [["prompt", p.prompt], ["negative prompt", p.negative_prompt],
    ["size", `${p.width} × ${p.height}`], ["steps", p.steps], ["guidance", p.guidance],
    ["seed", art ? art.seed : (p.seed ?? "random")], ["images", `${job.summary.completed} of ${p.count || 1}`],
    ["sampler", rec.scheduler ? `${rec.scheduler.name || "?"} (${rec.scheduler.class})` : (p.scheduler || "the model's own")],
    ["model", rec.model && [rec.model.name, rec.model.sha256 && rec.model.sha256.slice(0, 10)].filter(Boolean).join(" · ")],
    ["device", rec.device && `${rec.device}, ${rec.dtype || "?"}`],
    ["versions", rec.dreamforge && `DreamForge ${rec.dreamforge}` + (rec.torch ? `, torch ${rec.torch}, Diffusers ${rec.diffusers}` : "")],
    ["format", p.format], ["type", job.type],
    ["id", job.id], ["correlation id", job.correlation_id], ["attempts", job.attempts],
    ["retry of", job.retry_of], ["rerun of", job.rerun_of], ["sha256", art && art.sha256],
    ["bytes", art && art.size_bytes]]);
  renderItems(job);
  const t = open.timings || {};
  fillList($("job-timings"), [["created", new Date(job.created_at).toLocaleString()],
    ["waited", seconds(job.created_at, job.started_at)], ["ran", seconds(job.started_at, job.finished_at)],
    ...Object.entries(t).map(([k, v]) => [k, typeof v === "number" ? `${v.toFixed(3)} s` : v])]);
  const seeded = { ...p, seed: art ? art.seed : p.seed };
  $("job-df").textContent = dfCommand(seeded);
  $("job-curl").textContent = curlCommand(seeded);
  const frame = $("job-image");
  if (art && !frame.querySelector("img")) {
    const img = el("img", { alt: `Generated image: ${p.prompt}`, width: String(art.width), height: String(art.height) });
    img.dataset.keep = "1";
    frame.replaceChildren(img);
    loadImage(img, art.content_url).then((url) => {
      const a = $("job-download");
      a.href = url;
      a.download = art.s3_key.split("/").pop();
      a.hidden = false;
    }).catch((e) => frame.replaceChildren(el("p", { class: "error", text: e.message })));
  } else if (!art) {
    frame.replaceChildren(el("p", { class: "muted", text: `No image (${job.status})` }));
    $("job-download").hidden = true;
  }
}

// Every image of a batch, small, under the first one (each its item index and seed).
function renderItems(job) {
  const list = $("job-items");
  const shown = `${job.id}:${job.artifacts.length}`;
  if (list.dataset.shown === shown) return;
  list.dataset.shown = shown;
  if (job.artifacts.length < 2) return list.replaceChildren();
  list.replaceChildren(...job.artifacts.map((a) => {
    const img = el("img", { alt: `Image ${a.item_index + 1} (seed ${a.seed})`, width: "128", height: "128",
      decoding: "async" });
    img.dataset.src = a.thumbnail_url;
    lazy.observe(img);
    // A link can't send the token: with one, the thumbnails are all there is.
    const thumb = token ? img : el("a", { href: imageUrl(a.content_url), target: "_blank", rel: "noopener" }, img);
    return el("li", {}, thumb, el("span", { class: "muted", text: `#${a.item_index} · ${a.seed}` }));
  }));
}

function eventText(e) {
  const p = e.payload || {};
  if (e.kind === "progress") return `${p.current}/${p.total}`;
  if (e.kind === "status") return p.status + (p.error ? ` ${p.error.code || ""}` : "");
  return p.message || JSON.stringify(p);
}

async function loadLogs(id) {
  const r = await fetch(`/v1/jobs/${encodeURIComponent(id)}/logs`, { headers: headers({ Accept: "application/json" }), cache: "no-store" });
  if (!r.ok) return;
  const page = await r.json();
  $("job-logs").replaceChildren(...page.lines.map((l) =>
    el("li", {}, el("time", { text: new Date(l.at).toLocaleTimeString() }), ` ${l.level} `, el("span", { text: l.message }))));
}

async function showJob(id) {
  $("home").hidden = true;
  $("job").hidden = false;
  $("job-image").replaceChildren();
  $("job-download").hidden = true;
  $("job-action-error").textContent = "";
  $("job-events").replaceChildren();
  $("job-logs").replaceChildren();
  open.timings = null;
  let job;
  try {
    job = await api(`/v1/jobs/${encodeURIComponent(id)}`);
  } catch (e) {
    $("job-title").textContent = "Job not found";
    $("job-error").textContent = e.message;
    return;
  }
  renderJob(job);
  $("job-title").focus();
  loadLogs(id);
  jobView = new AbortController();
  const ends = (ev) => ev.event === "status" && TERMINAL.has(ev.data.payload.status);
  follow(`/v1/jobs/${encodeURIComponent(id)}/events`, (ev) => {
    const e = ev.data;
    $("job-events").append(el("li", {}, el("time", { text: new Date(e.at).toLocaleTimeString() }),
      ` ${e.kind} `, el("span", { text: eventText(e) })));
    if (!open.job || open.job.id !== id) return;
    if (e.kind === "progress" && open.job.steps[0]) {
      open.job.steps[0].progress = { current: e.payload.current, total: e.payload.total };
      open.job.status = "running";
      renderJob(open.job);
    } else if (e.kind === "status") {
      if (e.payload.timings) open.timings = e.payload.timings;
      open.job.status = e.payload.status;
      renderJob(open.job);
      if (TERMINAL.has(e.payload.status)) {
        api(`/v1/jobs/${encodeURIComponent(id)}`).then(renderJob).catch(() => {});
        loadLogs(id);
      }
    }
  }, { signal: jobView.signal, until: ends });
}

async function submitFrom(keepSeed) {
  $("job-action-error").textContent = "";
  const job = open.job;
  const art = job.artifacts[0];
  const params = { ...job.params, seed: art ? art.seed : job.params.seed };
  try {
    const created = await api("/v1/jobs", { method: "POST", body: requestOf(params, keepSeed) });
    upsert(created, { top: true });
    location.hash = `#/jobs/${created.id}`;
  } catch (e) {
    $("job-action-error").textContent = e.message;
  }
}

$("job-again").addEventListener("click", () => submitFrom(true));
$("job-vary").addEventListener("click", () => submitFrom(false));
$("job-cancel").addEventListener("click", async () => {
  const job = await cancelJob(open.job.id, $("job-cancel"));
  if (job) renderJob(job);
});
$("job-retry").addEventListener("click", async () => {
  try {
    const created = await api(`/v1/jobs/${encodeURIComponent(open.job.id)}/retry`, { method: "POST" });
    location.hash = `#/jobs/${created.id}`;
  } catch (e) {
    $("job-action-error").textContent = e.message;
  }
});
for (const button of document.querySelectorAll("[data-copy]")) {
  button.addEventListener("click", async () => {
    const text = $(button.dataset.copy).textContent;
    try {
      await navigator.clipboard.writeText(text);
      toast("Copied");
    } catch {
      const range = document.createRange();
      range.selectNodeContents($(button.dataset.copy));
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      toast("Selected: press Ctrl+C to copy");
    }
  });
}

// ---------- routing and sign-in ----------

function route() {
  if (jobView) jobView.abort();
  jobView = null;
  open.job = null;
  const m = location.hash.match(/^#\/jobs\/([\w-]+)$/);
  if (m) return showJob(m[1]);
  $("job").hidden = true;
  $("home").hidden = false;
}

function signedOut() {
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  if (feed) feed.abort();
  if (jobView) jobView.abort();
  cards.clear();
  $("gallery").replaceChildren();
  $("app").hidden = true;
  $("sign-out").hidden = true;
  $("live-state").textContent = "";
  $("sign-in").hidden = false;
}

async function start() {
  if (needsToken && !token) {
    signedOut();
    $("token").focus();
    return;
  }
  nextCursor = null;
  startFeed();
  try {
    await loadPage();
  } catch (e) {
    if (e.status !== 401) toast(e.message);
    if (e.status === 401) return;
  }
  performance.mark("df:listed");
  $("sign-in").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = !token;
  route();
}

$("sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  token = $("token").value.trim();
  $("token").value = "";
  $("sign-in-error").textContent = "";
  const r = await fetch("/v1/jobs?limit=1", { headers: headers({ Accept: "application/json" }) }).catch(() => null);
  if (!r || !r.ok) {
    token = null;
    $("sign-in-error").textContent = r && r.status === 401 ? "That token was not accepted." : "The server did not answer.";
    $("token").focus();
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  start();
});
$("sign-out").addEventListener("click", () => {
  signedOut();
  $("token").focus();
});
addEventListener("hashchange", route);
start();
