// The page of `videosys serve`: a client of its OpenAI-style /v1/videos API (polling, no framework).
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;
let currentJob = null;
let pick = { a: null, b: null };

function authorized(options = {}) {
  // a server started with --api-key wants it as a Bearer token (kept in this browser only)
  const key = $("api-key").value.trim();
  return key ? { ...options, headers: { ...(options.headers || {}), Authorization: `Bearer ${key}` } } : options;
}

async function api(path, options) {
  const response = await fetch(path, authorized(options));
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = body.error || {};
    const param = error.param ? `${error.param}: ` : "";
    throw new Error(`${response.status}: ${param}${error.message || response.statusText}`);
  }
  return body;
}

async function showVideo(element, id) {
  // fetched (with the key) into a blob: a <video src> cannot send an Authorization header
  const response = await fetch(`/v1/videos/${id}/content`, authorized());
  if (!response.ok) throw new Error(`${response.status}: the video of ${id} could not be loaded`);
  if (element.src.startsWith("blob:")) URL.revokeObjectURL(element.src);
  element.src = URL.createObjectURL(await response.blob());
}

function cacheSummary(cache) {
  // "teacache reused 4/10 steps, pab reused 12/40 calls" from a job's progress.cache / stats
  const parts = [];
  if (cache && cache.teacache) {
    const t = cache.teacache;
    parts.push(`teacache reused ${t.reused_steps}/${t.reused_steps + t.computed_steps} steps`);
  }
  if (cache && cache.pab) {
    let reused = 0, total = 0;
    for (const [key, n] of Object.entries(cache.pab)) {
      if (key.endsWith("_reused")) reused += n;
      if (key.endsWith("_reused") || key.endsWith("_computed")) total += n;
    }
    parts.push(`pab reused ${reused}/${total} calls`);
  }
  return parts.join(", ");
}

function timing(job) {
  const s = job.stats;
  if (!s) return "";
  return `total ${s.total_s.toFixed(2)} s (denoise ${s.denoise_s.toFixed(2)} s, decode ${s.decode_s.toFixed(2)} s)`;
}

function describe(job) {
  const r = job.request;
  const lines = [`"${r.prompt}"`, `cache ${r.cache ?? "server default"}, ${r.num_inference_steps} steps, seed ${r.seed ?? 0}`];
  if (job.stats) lines.push(timing(job));
  const reuse = cacheSummary(job.stats);
  if (reuse) lines.push(reuse);
  return lines.join("\n");
}

async function loadInfo() {
  info = await api("/info");
  $("reference-label").hidden = !info.input_reference;
  $("model-info").textContent = `${info.model} (${info.preset || info.model_path}), ${info.num_gpus} process(es)`;
  $("model").innerHTML = info.models.map((m) => `<option>${m}</option>`).join("");
  const caches = info.caches.includes(info.default_cache) || info.default_cache === null
    ? info.caches : [info.default_cache, ...info.caches];
  $("cache").innerHTML = (info.default_cache === null ? `<option value="" selected>server default</option>` : "") +
    caches.map((c) => `<option${c === info.default_cache ? " selected" : ""}>${c}</option>`).join("");
  const fields = $("fields");
  for (const field of info.fields) {
    const label = document.createElement("label");
    label.textContent = field.name;
    const input = document.createElement("input");
    input.name = field.name;
    input.dataset.type = field.type;
    input.type = field.type === "int" || field.type === "float" ? "number" : "text";
    if (field.type === "float") input.step = "any";
    input.value = field.default === null ? "" : field.default;
    input.placeholder = field.default === null ? "default" : String(field.default);
    label.appendChild(input);
    fields.appendChild(label);
  }
}

function requestBody() {
  // multipart, as OpenAI's client sends it: the server parses each field as its type
  const body = new FormData();
  body.append("prompt", $("prompt").value);
  body.append("model", $("model").value);
  if ($("cache").value) body.append("cache", $("cache").value);
  for (const input of $("fields").querySelectorAll("input")) {
    const raw = input.value.trim();
    if (raw !== "") body.append(input.name, raw);
  }
  const reference = $("reference").files[0];
  if (info.input_reference && reference) body.append("input_reference", reference);
  return body;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function submit(event) {
  event.preventDefault();
  showError("");
  try {
    const job = await api("/v1/videos", { method: "POST", body: requestBody() });
    currentJob = job.id;
    $("result").hidden = true;
    $("result-stats").textContent = "";
    $("cancel").disabled = false;
    poll();
    refreshJobs();
  } catch (err) {
    showError(err.message);
  }
}

async function poll() {
  if (!currentJob) return;
  const job = await api(`/v1/videos/${currentJob}`);
  $("progress").max = job.total_steps || 1;
  $("progress").value = job.steps_done;
  const reuse = cacheSummary(job.cache_progress);
  $("progress-text").textContent = `${job.status}: step ${job.steps_done}/${job.total_steps}${reuse ? ", " + reuse : ""}`;
  if (job.status === "queued" || job.status === "in_progress") {
    setTimeout(poll, 250);
    return;
  }
  $("cancel").disabled = true;
  currentJob = null;
  if (job.status === "completed") {
    const video = $("result");
    await showVideo(video, job.id);
    video.hidden = false;
    $("result-stats").textContent = describe(job);
  } else if (job.status === "failed") {
    showError(`job failed: ${job.error.message}`);
  }
  refreshJobs();
}

async function cancel() {
  if (currentJob) await api(`/v1/videos/${currentJob}`, { method: "DELETE" });  // cancelled and deleted
  currentJob = null;
  $("cancel").disabled = true;
  $("progress-text").textContent = "cancelled";
  refreshJobs();
}

let shownJobs = "";

async function refreshJobs() {
  const jobs = (await api("/v1/videos?limit=100")).data;
  // rebuild the table only when a job changed: a click must not land on a row being replaced
  const signature = JSON.stringify(jobs.map((j) => [j.id, j.status, j.steps_done]));
  if (signature === shownJobs) return;
  shownJobs = signature;
  const rows = jobs.map((job) => {
    const done = job.status === "completed";
    const radio = (slot) => `<input type="radio" name="pick-${slot}" value="${job.id}" ${done ? "" : "disabled"}` +
      `${pick[slot] === job.id ? " checked" : ""}>`;
    const time = job.stats ? `${job.stats.total_s.toFixed(2)} s` : "";
    const steps = `${job.steps_done}/${job.total_steps}`;
    const title = (job.error ? job.error.message : job.prompt).replace(/"/g, "&quot;");
    return `<tr data-job="${job.id}"><td>${radio("a")}</td><td>${radio("b")}</td>` +
      `<td class="prompt" title="${title}"></td><td>${job.request.cache ?? "server default"}</td><td>${steps}</td>` +
      `<td class="state-${job.status}">${job.status}</td><td>${time}</td></tr>`;
  });
  const body = $("jobs").querySelector("tbody");
  body.innerHTML = rows.join("");
  body.querySelectorAll("tr").forEach((tr, i) => { tr.querySelector(".prompt").textContent = jobs[i].request.prompt; });
  body.querySelectorAll("input[type=radio]").forEach((r) => r.addEventListener("change", () => {
    pick[r.name.slice(5)] = r.value;
    compare();
  }));
}

async function compare() {
  if (!pick.a || !pick.b) return;
  try {
    const result = await api(`/compare?a=${pick.a}&b=${pick.b}`);
    const shown = !$("compare").hidden;
    $("compare").hidden = false;
    if (!shown) $("compare").scrollIntoView();
    $("psnr").textContent = `PSNR ${result.psnr.toFixed(2)} dB`;
    const videos = [$("compare-a"), $("compare-b")];
    let loaded = 0;
    for (const [i, slot] of ["a", "b"].entries()) {
      videos[i].onloadeddata = () => {  // both loaded: start them together, frame for frame
        if (++loaded < 2) return;
        for (const v of videos) { v.currentTime = 0; v.play(); }
      };
      await showVideo(videos[i], result[slot].id);
      $(`caption-${slot}`).textContent = `${slot.toUpperCase()}: ${describe(result[slot])}`;
    }
  } catch (err) {
    showError(err.message);
  }
}

$("form").addEventListener("submit", submit);
$("cancel").addEventListener("click", cancel);
$("api-key").value = localStorage.getItem("videosys-api-key") || "";
$("api-key").addEventListener("change", () => {
  localStorage.setItem("videosys-api-key", $("api-key").value.trim());
  showError("");
  if (!info) loadInfo().then(refreshJobs).catch((err) => showError(err.message));
});
loadInfo().then(refreshJobs).catch((err) => showError(err.message));
setInterval(refreshJobs, 3000);
