// The offshelf search page: query by an image (drop, paste, choose) or by a stored item (?id=...).
// No build step and nothing fetched from elsewhere: it talks only to this server's /v1 API.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { image: null, id: null, text: null, last: null };

function options() {
  const out = { k: $("k").value || "24" };
  if ($("min-score").value !== "") out.min_score = $("min-score").value;
  if ($("prefix").value !== "") out.prefix = $("prefix").value;
  return out;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function explain(response) {
  let detail = "";
  try { detail = (await response.json()).detail; } catch (_) { /* not JSON */ }
  if (response.status === 413) return "That image is too large for this server. " + (detail || "");
  if (response.status === 503) return "The server is not ready yet: " + (detail || "try again in a moment.");
  return detail || `The server answered ${response.status}.`;
}

function writeUrl(push) {
  const params = new URLSearchParams();
  if (state.id !== null) params.set("id", state.id);
  if (state.text !== null) params.set("text", state.text);
  for (const [key, value] of Object.entries(options())) params.set(key, value);
  const url = `${location.pathname}?${params}`;
  if (push) history.pushState(null, "", url); else history.replaceState(null, "", url);
}

function readUrl() {
  const params = new URLSearchParams(location.search);
  if (params.has("k")) $("k").value = params.get("k");
  $("min-score").value = params.get("min_score") || "";
  $("prefix").value = params.get("prefix") || "";
  state.id = params.has("id") ? params.get("id") : null;
  state.text = params.has("text") ? params.get("text") : null;
  if (state.text !== null) $("text").value = state.text;
}

function show(answer) {
  state.last = answer;
  $("download").disabled = false;
  const list = $("results");
  list.replaceChildren();
  for (const hit of answer.hits) {
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = `?id=${hit.id}`;
    link.title = `Search by ${hit.path}`;
    link.dataset.id = hit.id;
    const img = document.createElement("img");
    img.loading = hit.rank <= 24 ? "eager" : "lazy";  // the first screenful at once, the rest as scrolled to
    img.alt = hit.path.split("/").pop();
    img.src = `/v1/items/${hit.id}/thumbnail`;
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.innerHTML = `<span class="score"></span> <span class="rank"></span><div class="path"></div>`;
    meta.querySelector(".score").textContent = hit.score.toFixed(3);
    meta.querySelector(".rank").textContent = `#${hit.rank}`;
    const cut = hit.path.lastIndexOf("/") + 1;  // the folder muted, the file name plain; together the full path
    const folder = document.createElement("span");
    folder.className = "dir";
    folder.textContent = hit.path.slice(0, cut);
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = hit.path.slice(cut);
    meta.querySelector(".path").append(folder, name);
    link.append(img, meta);
    link.addEventListener("click", (event) => {
      event.preventDefault();
      searchById(hit.id, true);
    });
    item.append(link);
    list.append(item);
  }
  const n = answer.hits.length;
  setStatus(n ? `${n} result${n === 1 ? "" : "s"} in ${answer.took_ms.toFixed(0)} ms` :
    "No results: lower the minimum similarity or change the path filter.");
}

// Ids use 63 bits, more than a JavaScript number holds exactly: keep them as strings both ways.
const parseWithIds = (text) => JSON.parse(text.replace(/([{,])"id":(\d+)/g, '$1"id":"$2"'));
const stringifyWithIds = (body) => JSON.stringify(body).replace(/([{,])"id":"(\d+)"/g, "$1\"id\":$2");

async function run(request) {
  setStatus("Searching…");
  try {
    const response = await fetch("/v1/search", request);
    if (!response.ok) { setStatus(await explain(response), true); return; }
    show(parseWithIds(await response.text()));
  } catch (error) {
    setStatus("Cannot reach the server: " + error.message, true);
  }
}

function searchByText(text, push) {
  if (!text.trim()) { setStatus("Type what the images should show.", true); return; }
  state.text = text;
  state.id = null;
  state.image = null;
  $("preview").hidden = true;
  writeUrl(push);
  const body = { text, ...options() };
  body.k = Number(body.k);
  if (body.min_score !== undefined) body.min_score = Number(body.min_score);
  return run({ method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

function searchById(id, push) {
  state.id = id;
  state.text = null;
  state.image = null;
  $("preview").src = `/v1/items/${id}/thumbnail`;
  $("preview").hidden = false;
  writeUrl(push);
  const body = { id: /^\d+$/.test(id) ? id : "-1", ...options() };  // a malformed id gets the server's 422
  body.k = Number(body.k);
  if (body.min_score !== undefined) body.min_score = Number(body.min_score);
  return run({ method: "POST", headers: { "Content-Type": "application/json" }, body: stringifyWithIds(body) });
}

function searchByImage(file) {
  if (!file) return;
  if (!file.type.startsWith("image/") && file.type !== "") { setStatus(`${file.name} is not an image.`, true); return; }
  state.image = file;
  state.id = null;
  state.text = null;
  $("preview").src = URL.createObjectURL(file);
  $("preview").hidden = false;
  writeUrl(true);
  const form = new FormData();
  form.append("image", file, file.name || "pasted-image");
  for (const [key, value] of Object.entries(options())) form.append(key, value);
  return run({ method: "POST", body: form });
}

function rerun() {
  if (state.image) searchByImage(state.image);
  else if (state.id !== null) searchById(state.id, false);
  else if (state.text !== null) searchByText(state.text, false);
  else writeUrl(false);
}

async function loadStats() {
  try {
    const response = await fetch("/v1/stats");
    if (!response.ok) { $("stats").textContent = await explain(response); return; }
    const s = await response.json();
    $("stats").textContent = `${s.items.toLocaleString()} images · ${s.model} ${s.layer}/${s.pool} · ${s.index.kind} index`;
    $("text-query").hidden = !s.text;  // a text box only when the store's model has a text tower
  } catch (error) {
    $("stats").textContent = "Cannot reach the server.";
  }
}

$("file").addEventListener("change", (event) => searchByImage(event.target.files[0]));
const drop = $("drop");
for (const name of ["dragenter", "dragover"]) drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => { event.preventDefault(); searchByImage(event.dataTransfer.files[0]); });
drop.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") $("file").click(); });
document.addEventListener("paste", (event) => {
  const file = [...(event.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
  if (file) searchByImage(file);
});
$("text-query").addEventListener("submit", (event) => { event.preventDefault(); searchByText($("text").value, true); });
$("options").addEventListener("change", rerun);
$("options").addEventListener("submit", (event) => { event.preventDefault(); rerun(); });
$("download").addEventListener("click", () => {
  const blob = new Blob([JSON.stringify(state.last, null, 2)], { type: "application/json" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = "offshelf-results.json";
  link.click();
});
window.addEventListener("popstate", () => {
  readUrl();
  if (state.id !== null) searchById(state.id, false);
  else if (state.text !== null) searchByText(state.text, false);
});

readUrl();
loadStats();
if (state.id !== null) searchById(state.id, false);
else if (state.text !== null) searchByText(state.text, false);
