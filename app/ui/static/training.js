// Training in the admin console: the job form (names from GET /catalogue), the job list, and the
// live progress of one job (polling GET /train/{id}), ending on the new version's plots.

import { call, el, percent } from "./api.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 500;
const FINISHED = new Set(["succeeded", "failed", "cancelled", "interrupted"]);
let watching = null; // the job id whose progress is shown

function progressOf(job) {
  const p = job.progress;
  if (!p) return job.status === "succeeded" ? 1 : 0;
  return Math.min(1, (p.epoch - 1 + (p.steps ? p.step / p.steps : 0)) / (p.epochs || 1));
}

function describe(job) {
  const p = job.progress;
  const where = p && !FINISHED.has(job.status) ? `, epoch ${p.epoch} of ${p.epochs}, step ${p.step} of ${p.steps}` : "";
  const last = job.metrics.at(-1);
  const accuracy = last ? `, test accuracy ${percent(last.test_accuracy, 2)}` : "";
  const outcome = job.version ? `, published version ${job.version}` : job.error ? `: ${job.error}` : "";
  return `Job ${job.id} (${job.model}): ${job.status}${where}${accuracy}${outcome}`;
}

async function refreshJobs(session) {
  const { body: jobs } = await session.admin("/train?limit=20");
  $("jobs").tBodies[0].replaceChildren(...jobs.map((job) => {
    const watch = el("button", { type: "button", class: "small", onclick: () => watchJob(session, job.id) }, `#${job.id}`);
    watch.setAttribute("aria-label", `watch job ${job.id}`);
    return el("tr", { "data-job": String(job.id), "data-status": job.status },
      el("th", { scope: "row" }, watch),
      el("td", {}, job.model),
      el("td", { class: `job-status ${job.status}` }, job.status),
      el("td", {}, percent(progressOf(job), 0)),
      el("td", {}, job.version ? `v${job.version}` : "–"),
      el("td", {}, new Date(job.created_at).toLocaleString()));
  }));
  return jobs;
}

async function watchJob(session, id) {
  watching = id;
  $("watch").hidden = false;
  $("watch-title").textContent = `Job ${id}`;
  let said = "";
  for (;;) {
    if (watching !== id) return; // another job was chosen
    const { body: job } = await session.admin(`/train/${id}`);
    const text = describe(job);
    if (text !== said) $("watch-status").textContent = said = text; // announced only when it changes
    $("watch-progress").value = progressOf(job);
    $("watch").dataset.status = job.status;
    if (FINISHED.has(job.status)) {
      await refreshJobs(session);
      if (job.status === "succeeded" && job.version) await showPublished(session, job.model, job.version);
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

// The server hot-loads a new version at its next repository poll: wait until it serves it (or
// lists it, when the model is pinned to another version and so keeps serving that one).
async function showPublished(session, name, version) {
  for (let tries = 0; tries < 60; tries += 1) {
    await session.refreshModels();
    const model = session.models.get(name);
    if (model?.served_version === version || (model?.pinned && model.versions.includes(version))) break;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
  await session.showVersion(name, version);
  session.notice(`${name} version ${version} published.`);
}

function presetFrom(session) {
  const model = session.models.get($("job-model").value);
  if (!model) return;
  if (model.architecture) $("job-architecture").value = model.architecture;
  if (model.dataset) $("job-dataset").value = model.dataset;
}

export async function startTraining(session) {
  const { body: catalogue } = await call("/catalogue");
  $("job-architecture").replaceChildren(...catalogue.architectures.map((name) => el("option", { value: name }, name)));
  $("job-dataset").replaceChildren(...catalogue.datasets.map((d) => el("option", { value: d.name }, `${d.name} (${d.labels.length} classes)`)));
  const epochs = catalogue.parameters.properties.epochs;
  Object.assign($("job-epochs"), { min: epochs.minimum, max: epochs.maximum, value: epochs.default });
  presetFrom(session);
  $("job-model").addEventListener("change", () => presetFrom(session));
  $("train").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("train-error").textContent = "";
    const samples = $("job-samples").value;
    const request = {
      model: $("job-model").value,
      architecture: $("job-architecture").value,
      dataset: $("job-dataset").value,
      epochs: Number($("job-epochs").value),
      augment: $("job-augment").checked,
      ...(samples ? { max_samples: Number(samples) } : {}),
    };
    try {
      const { body: job } = await session.admin("/train", { method: "POST", json: request });
      session.notice(`Job ${job.id} queued: a worker (python -m training.worker) picks it up.`);
      await refreshJobs(session);
      await watchJob(session, job.id);
    } catch (error) {
      $("train-error").textContent = `Refused: ${error.message}`;
    }
  });
  const jobs = await refreshJobs(session);
  const running = jobs.find((job) => !FINISHED.has(job.status));
  if (running) watchJob(session, running.id);
}

