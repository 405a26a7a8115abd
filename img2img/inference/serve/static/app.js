// The img2img serve page: pick or drop an image, it is posted to the API and the answer is shown
// beside the input (or under a before/after slider) with a download link. No libraries.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], file: null, inputUrl: null, outputUrl: null, request: 0 };

function setStatus(text, kind) {
  $("status").textContent = text;
  $("status").className = kind || "";
}

function cell(row, text, header) {
  const el = document.createElement(header ? "th" : "td");
  el.textContent = text === null || text === undefined ? "—" : String(text);
  row.appendChild(el);
}

function currentModel() {
  return state.models.find((m) => m.name === $("model").value) || state.models[0];
}

function showModel() {
  const model = currentModel();
  if (!model) return;
  const direction = $("direction");
  const previous = direction.value;
  direction.replaceChildren();
  for (const name of Object.keys(model.directions)) {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    direction.appendChild(option);
  }
  if (model.directions[previous]) direction.value = previous;
  const info = model.directions[direction.value] || {};
  const rows = [
    ["task", model.task], ["pipeline", model.pipeline], ["generator", model.generator],
    ["kind", `${model.kind} (${model.file})`], ["directions", Object.keys(model.directions).join(", ")],
    ["channels", `${info.in_channels} → ${info.out_channels}`], ["size multiple", info.size_multiple],
    ["EMA", info.ema], ["step", model.step], ["trained with", model.img2img_version ? `img2img ${model.img2img_version}` : null],
    ["runs on", info.runs_on],
  ];
  const body = $("metadata").tBodies[0];
  body.replaceChildren();
  for (const [key, value] of rows) {
    const row = body.insertRow();
    cell(row, key, true);
    cell(row, value);
  }
  if (model.onnx_metadata) {
    for (const [key, value] of Object.entries(model.onnx_metadata)) {
      const row = body.insertRow();
      cell(row, `onnx ${key}`, true);
      cell(row, value);
    }
  }
}

async function loadModels() {
  try {
    const response = await fetch("v1/models");
    state.models = (await response.json()).models;
    showModel();
  } catch (err) {
    setStatus(`cannot list the models: ${err}`, "error");
  }
}

function extension(type) {
  return { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/tiff": "tif", "image/bmp": "bmp" }[type] || "png";
}

async function translate() {
  if (!state.file) return;
  const request = ++state.request;
  const model = $("model").value;
  const params = new URLSearchParams({ direction: $("direction").value });
  if ($("format").value) params.set("format", $("format").value);
  if ($("tile").value) params.set("tile", $("tile").value);
  document.body.dataset.state = "working";
  setStatus(`translating ${state.file.name} with ${model} (${$("direction").value})…`);
  const started = performance.now();
  let response;
  try {
    response = await fetch(`v1/models/${encodeURIComponent(model)}/translate?${params}`, {
      method: "POST", body: state.file, headers: { "Content-Type": state.file.type || "application/octet-stream" },
    });
  } catch (err) {
    if (request !== state.request) return;
    document.body.dataset.state = "error";
    setStatus(`the server did not answer: ${err}`, "error");
    return;
  }
  if (request !== state.request) return;  // a newer image or option replaced this one
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      message = body.error.message + (body.error.field ? ` (field: ${body.error.field})` : "");
    } catch (err) { /* not JSON: keep the status line */ }
    document.body.dataset.state = "error";
    setStatus(message, "error");
    return;
  }
  const blob = await response.blob();
  if (request !== state.request) return;
  if (state.outputUrl) URL.revokeObjectURL(state.outputUrl);
  state.outputUrl = URL.createObjectURL(blob);
  for (const id of ["output", "slider-output"]) $(id).src = state.outputUrl;
  await $("output").decode().catch(() => {});
  const stem = state.file.name.replace(/\.[^.]*$/, "") || "image";
  const name = `${stem}-${model}-${$("direction").value}.${extension(blob.type)}`;
  $("download").href = state.outputUrl;
  $("download").download = name;
  $("output-caption").textContent = `translated (${model}, ${$("direction").value})`;
  $("result").hidden = false;
  const seconds = ((performance.now() - started) / 1000).toFixed(2);
  setStatus(`${state.file.name}: ${$("output").naturalWidth}×${$("output").naturalHeight} in ${seconds} s`);
  document.body.dataset.state = "done";
}

function useFile(file) {
  if (!file) return;
  state.file = file;
  if (state.inputUrl) URL.revokeObjectURL(state.inputUrl);
  state.inputUrl = URL.createObjectURL(file);
  for (const id of ["input", "slider-input"]) $(id).src = state.inputUrl;
  translate();
}

function setView(view) {
  $("side").hidden = view !== "side";
  $("slider").hidden = view !== "slider";
}

function moveSlider() {
  const value = $("slider-range").value;
  $("slider-output").style.clipPath = `inset(0 0 0 ${value}%)`;
  $("slider-line").style.left = `${value}%`;
}

$("file").addEventListener("change", (event) => useFile(event.target.files[0]));
$("model").addEventListener("change", () => { showModel(); translate(); });
$("direction").addEventListener("change", () => { showModel(); translate(); });
$("format").addEventListener("change", translate);
$("tile").addEventListener("change", translate);
$("slider-range").addEventListener("input", moveSlider);
for (const radio of document.querySelectorAll('input[name="view"]')) {
  radio.addEventListener("change", () => setView(radio.value));
}
const drop = $("drop");
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
}
for (const name of ["dragleave", "drop"]) {
  drop.addEventListener(name, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  useFile(event.dataTransfer.files[0]);
});
moveSlider();
loadModels();
