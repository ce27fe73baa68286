// The page of `videosys serve`: a client of the JSON API (polling, no framework).
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;
let currentJob = null;
let pick = { a: null, b: null };

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = body.detail;
    const message = Array.isArray(detail)
      ? detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".") || "request"}: ${d.msg}`).join("\n")
      : detail || response.statusText;
    throw new Error(`${response.status}: ${message}`);
  }
  return body;
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
  const body = { prompt: $("prompt").value };
  if ($("cache").value) body.cache = $("cache").value;
  for (const input of $("fields").querySelectorAll("input")) {
    const raw = input.value.trim();
    if (raw === "") continue;
    const type = input.dataset.type;
    if (type === "int") body[input.name] = Number.parseInt(raw, 10);
    else if (type === "float") body[input.name] = Number.parseFloat(raw);
    else if (type === "int|str" && /^\d+$/.test(raw)) body[input.name] = Number.parseInt(raw, 10);
    else body[input.name] = raw;
  }
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
    const job = await api("/jobs", { method: "POST", headers: { "Content-Type": "application/json" },
                                     body: JSON.stringify(requestBody()) });
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
  const job = await api(`/jobs/${currentJob}`);
  const p = job.progress;
  $("progress").max = p.total_steps || 1;
  $("progress").value = p.steps_done;
  const reuse = cacheSummary(p.cache);
  $("progress-text").textContent = `${job.state}: step ${p.steps_done}/${p.total_steps}${reuse ? ", " + reuse : ""}`;
  if (job.state === "queued" || job.state === "running") {
    setTimeout(poll, 250);
    return;
  }
  $("cancel").disabled = true;
  currentJob = null;
  if (job.state === "done") {
    const video = $("result");
    video.src = `/jobs/${job.id}/video`;
    video.hidden = false;
    $("result-stats").textContent = describe(job);
  } else if (job.state === "failed") {
    showError(`job failed: ${job.error}`);
  }
  refreshJobs();
}

async function cancel() {
  if (currentJob) await api(`/jobs/${currentJob}/cancel`, { method: "POST" });
}

let shownJobs = "";

async function refreshJobs() {
  const jobs = await api("/jobs");
  // rebuild the table only when a job changed: a click must not land on a row being replaced
  const signature = JSON.stringify(jobs.map((j) => [j.id, j.state, j.progress.steps_done]));
  if (signature === shownJobs) return;
  shownJobs = signature;
  const rows = jobs.map((job) => {
    const done = job.state === "done";
    const radio = (slot) => `<input type="radio" name="pick-${slot}" value="${job.id}" ${done ? "" : "disabled"}` +
      `${pick[slot] === job.id ? " checked" : ""}>`;
    const time = job.stats ? `${job.stats.total_s.toFixed(2)} s` : "";
    const steps = `${job.progress.steps_done}/${job.progress.total_steps}`;
    const title = (job.error || job.request.prompt).replace(/"/g, "&quot;");
    return `<tr data-job="${job.id}"><td>${radio("a")}</td><td>${radio("b")}</td>` +
      `<td class="prompt" title="${title}"></td><td>${job.request.cache ?? "server default"}</td><td>${steps}</td>` +
      `<td class="state-${job.state}">${job.state}</td><td>${time}</td></tr>`;
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
      videos[i].src = `/jobs/${result[slot].id}/video`;
      $(`caption-${slot}`).textContent = `${slot.toUpperCase()}: ${describe(result[slot])}`;
    }
  } catch (err) {
    showError(err.message);
  }
}

$("form").addEventListener("submit", submit);
$("cancel").addEventListener("click", cancel);
loadInfo().then(refreshJobs).catch((err) => showError(err.message));
setInterval(refreshJobs, 3000);
