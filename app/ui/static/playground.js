// The playground: draw or drop an image, POST it to /predict/{model}?include_input=true, show
// every class probability, the latency, and the 28x28 input the model saw.

import { ApiError, call, el, percent } from "./api.js";
import { bars } from "./charts.js";

const $ = (id) => document.getElementById(id);
const pad = $("pad");
const ink = pad.getContext("2d");
const models = new Map(); // name -> GET /models summary
const DEBOUNCE_MS = 120; // while drawing: one request per pause, not one per pointer move
let inFlight = null; // the AbortController of the request whose answer is still wanted
let timer = null;
let drawn = false;
let last = null; // what was sent last: redone when the model changes
let sentUrl = null;

function clearPad() {
  ink.fillStyle = "#000";
  ink.fillRect(0, 0, pad.width, pad.height);
  drawn = false;
}

async function loadModels() {
  const select = $("model");
  try {
    const { body } = await call("/models");
    for (const model of body) {
      models.set(model.name, model);
      const accuracy = model.test_accuracy === null ? "" : ` — ${percent(model.test_accuracy)}`;
      const version = model.served_version ? ` v${model.served_version}` : " (not served)";
      select.append(el("option", { value: model.name, disabled: !model.served_version }, `${model.name}${version}${accuracy}`));
    }
    const digits = body.find((m) => m.preprocessing === "digit" && m.served_version);
    if (digits) select.value = digits.name;
    describeModel();
  } catch (error) {
    showError(`Could not list the models: ${error.message}`);
  }
}

function describeModel() {
  const model = models.get($("model").value);
  $("model-info").textContent = model
    ? `${model.dataset ?? "?"}, ${model.architecture ?? "?"}, ${model.labels.length} classes, recipe: ${model.preprocessing ?? "?"}`
    : "";
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
  $("status").textContent = "No answer.";
}

// Sends `blob` now, cancelling a request still in flight: only the newest drawing's answer counts.
async function predict(blob, source) {
  const name = $("model").value;
  if (!name) return;
  last = { blob, source };
  inFlight?.abort();
  const controller = new AbortController();
  inFlight = controller;
  const type = blob.type.startsWith("image/") ? blob.type : "application/octet-stream";
  try {
    const { body, ms } = await call(`/predict/${encodeURIComponent(name)}?include_input=true`, {
      method: "POST", body: blob, headers: { "Content-Type": type }, signal: controller.signal,
    });
    if (controller !== inFlight) return;
    show(body, ms, source);
  } catch (error) {
    if (error.name === "AbortError" || controller !== inFlight) return; // superseded
    showError(error instanceof ApiError ? `The server refused it (${error.status}): ${error.message}` : `Request failed: ${error.message}`);
    $("saw").hidden = true;
  } finally {
    if (controller === inFlight) inFlight = null;
  }
}

function show(answer, ms, source) {
  $("error").hidden = true;
  $("status").textContent = `${answer.label} — ${percent(answer.confidence)} sure (${answer.model} v${answer.version}, ${Math.round(ms)} ms)`;
  $("status").dataset.label = answer.label;
  bars($("bars"), Object.entries(answer.probabilities), answer.label);
  const saw = $("saw");
  saw.src = `data:image/png;base64,${answer.input_png}`;
  saw.alt = `the 28 by 28 pixel input the model saw, from ${source}`;
  saw.hidden = false;
}

function showSent(blob, description) {
  if (sentUrl) URL.revokeObjectURL(sentUrl);
  sentUrl = URL.createObjectURL(blob);
  const sent = $("sent");
  sent.src = sentUrl;
  sent.alt = description;
  sent.hidden = false;
}

function sendDrawing() {
  if (!drawn) return;
  pad.toBlob((blob) => {
    if (!blob) return;
    showSent(blob, "your drawing");
    predict(blob, "your drawing");
  }, "image/png");
}

function sendFile(file) {
  if (!file) return;
  showSent(file, `the file ${file.name || "you pasted"}`);
  predict(file, file.name || "the pasted image");
}

// Drawing: pointer events cover mouse, pen and touch alike; touch-action: none (CSS) keeps the
// page from scrolling under a finger.
let stroke = null;
function point(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * (pad.width / box.width), (event.clientY - box.top) * (pad.height / box.height)];
}
pad.addEventListener("pointerdown", (event) => {
  pad.setPointerCapture(event.pointerId);
  stroke = point(event);
  ink.beginPath();
  ink.arc(stroke[0], stroke[1], ink.lineWidth / 2, 0, 2 * Math.PI);
  ink.fillStyle = "#fff";
  ink.fill();
  drawn = true;
});
pad.addEventListener("pointermove", (event) => {
  if (!stroke) return;
  const next = point(event);
  ink.beginPath();
  ink.moveTo(...stroke);
  ink.lineTo(...next);
  ink.stroke();
  stroke = next;
  clearTimeout(timer);
  timer = setTimeout(sendDrawing, DEBOUNCE_MS);
});
for (const end of ["pointerup", "pointercancel"]) {
  pad.addEventListener(end, () => {
    if (!stroke) return;
    stroke = null;
    clearTimeout(timer);
    sendDrawing();
  });
}

ink.lineWidth = 22; // a marker on 280 px: MNIST's strokes are 2-3 px of 28
ink.lineCap = "round";
ink.lineJoin = "round";
ink.strokeStyle = "#fff";
clearPad();

$("clear").addEventListener("click", () => {
  clearPad();
  inFlight?.abort();
  inFlight = null;
  $("bars").replaceChildren();
  $("saw").hidden = true;
  $("sent").hidden = true;
  $("error").hidden = true;
  $("status").textContent = "Cleared. Draw or drop something.";
});
$("model").addEventListener("change", () => {
  describeModel();
  if (last) predict(last.blob, last.source);
});
$("file").addEventListener("change", (event) => sendFile(event.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  sendFile(event.dataTransfer.files[0]);
});
document.addEventListener("paste", (event) => {
  const file = [...(event.clipboardData?.files ?? [])][0];
  if (file) sendFile(file);
});

loadModels();
