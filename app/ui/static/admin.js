// The admin console: the token (sessionStorage only), models and their versions, activation,
// per-version plots. Training jobs are in training.js. It uses the admin HTTP API, as
// pixelserve-admin does; GET /models/{name}/versions/{version} is public.

import { ApiError, call, el, percent } from "./api.js";
import { bars, heatmap, lineChart } from "./charts.js";
import { startTraining } from "./training.js";

const $ = (id) => document.getElementById(id);
const KEY = "pixelserve.adminToken"; // sessionStorage: gone with the tab, never in a URL or a cookie
const session = { token: sessionStorage.getItem(KEY), models: new Map() };

// An admin call; a refused token (changed on the server meanwhile) signs out with the API's message.
session.admin = async (path, options = {}) => {
  try {
    return await call(path, { ...options, token: session.token });
  } catch (error) {
    if (error instanceof ApiError && (error.status === 401 || error.status === 403)) signOut(error.message);
    throw error;
  }
};
session.notice = (message) => {
  $("notice").textContent = message;
};

function signOut(message = "") {
  sessionStorage.removeItem(KEY);
  session.token = null;
  $("console").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("token").value = "";
  $("token").focus();
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const candidate = $("token").value.trim();
  $("login-error").textContent = "";
  try {
    await call("/train?limit=1", { token: candidate }); // the cheapest admin route: is this token good?
  } catch (error) {
    $("login-error").textContent = `Refused: ${error.message}`;
    $("token").select();
    return;
  }
  sessionStorage.setItem(KEY, candidate);
  session.token = candidate;
  open();
});
$("logout").addEventListener("click", () => signOut("Signed out."));

const versionNumber = (v) => Number.parseInt(v, 10);
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");

// Every model with its versions: accuracy, creation time, architecture, served/pinned, actions.
session.refreshModels = async () => {
  const { body: summaries } = await call("/models");
  const cards = [];
  $("model-names").replaceChildren(...summaries.map((m) => el("option", { value: m.name })));
  for (const summary of summaries) {
    const { body: model } = await call(`/models/${encodeURIComponent(summary.name)}`);
    session.models.set(model.name, model);
    const rows = [...model.version_details].sort((a, b) => versionNumber(b.version) - versionNumber(a.version)).map((v) => {
      const served = v.version === model.served_version;
      const rollout = model.rollout;
      const trial = rollout?.candidate === v.version ? `candidate ${Math.round(rollout.weight * 100)} %` : rollout?.shadow === v.version ? "shadow" : "";
      const state = served ? (model.pinned ? "served, pinned" : "served") : v.error ? "unreadable" : trial;
      const show = el("button", { type: "button", class: "small", onclick: () => session.showVersion(model.name, v.version) }, "Plots");
      show.setAttribute("aria-label", `plots of ${model.name} version ${v.version}`);
      const activate = el("button", { type: "button", class: "small", disabled: served || Boolean(v.error), onclick: () => activateVersion(model, v.version) },
        versionNumber(v.version) < versionNumber(model.served_version ?? "0") ? "Roll back" : "Activate");
      activate.setAttribute("aria-label", `${activate.textContent} ${model.name} to version ${v.version}`);
      const canary = rolloutButton(model, v, "Canary", served);
      const shadow = rolloutButton(model, v, "Shadow", served);
      return el("tr", { class: served ? "served" : "" },
        el("th", { scope: "row" }, `v${v.version}`),
        el("td", {}, percent(v.test_accuracy, 2)),
        el("td", {}, when(v.created_at)),
        el("td", {}, v.architecture ?? v.error ?? "–"),
        el("td", {}, state),
        el("td", { class: "actions" }, show, activate, canary, shadow));
    });
    const head = el("thead", {}, el("tr", {}, ...["Version", "Accuracy", "Created", "Architecture", "State", ""].map((h) => el("th", { scope: "col" }, h))));
    cards.push(el("article", { class: "card model", "data-model": model.name },
      el("h3", {}, `${model.name} `, el("span", { class: "muted" }, `${model.dataset ?? ""} · serves ${model.served_version ? `v${model.served_version}` : "nothing"}${model.pinned ? " (pinned)" : ""}`)),
      model.error ? el("p", { class: "error" }, model.error) : null,
      model.rollout ? rolloutLine(model) : null,
      el("div", { class: "scroll" }, el("table", {}, head, el("tbody", {}, ...rows)))));
  }
  $("models").replaceChildren(...cards);
};

// Rollouts (PUT/DELETE /models/{name}/rollout, POST .../promote): a canary or a shadow, then promote or abort.
function rolloutButton(model, v, kind, served) {
  const button = el("button", { type: "button", class: "small", disabled: served || Boolean(v.error), onclick: () => startRollout(model, v.version, kind) }, kind);
  button.setAttribute("aria-label", `${kind} ${model.name} version ${v.version}`);
  return button;
}

function rolloutLine(model) {
  const r = model.rollout;
  const parts = [r.candidate && `candidate v${r.candidate} answers ${Math.round(r.weight * 100)} %`, r.shadow && `v${r.shadow} runs in the shadow (${Math.round(r.shadow_rate * 100)} %)`];
  const act = (verb, method, path) => {
    const button = el("button", { type: "button", class: "small", onclick: () => endRollout(model, verb, method, path) }, verb);
    button.setAttribute("aria-label", `${verb} ${model.name} rollout`);
    return button;
  };
  const base = `/models/${encodeURIComponent(model.name)}/rollout`;
  return el("p", { class: "rollout" }, `Rollout: ${parts.filter(Boolean).join("; ")}${r.auto ? `; decides after ${r.auto.min_requests} requests` : ""}. `,
    act("Promote", "POST", `${base}/promote`), " ", act("Abort", "DELETE", base));
}

async function startRollout(model, version, kind) {
  let policy = { shadow: version };
  if (kind === "Canary") {
    const answer = window.prompt(`Share of ${model.name}'s requests for version ${version} (0-1):`, "0.1");
    if (answer === null) return;
    policy = { candidate: version, weight: Number(answer) };
  }
  try {
    await session.admin(`/models/${encodeURIComponent(model.name)}/rollout`, { method: "PUT", json: policy });
    session.notice(kind === "Canary" ? `${model.name}: version ${version} answers ${Math.round(policy.weight * 100)} % of requests.` : `${model.name}: version ${version} runs in the shadow.`);
    await session.refreshModels();
  } catch (error) {
    session.notice(`${kind} refused: ${error.message}`);
  }
}

async function endRollout(model, verb, method, path) {
  try {
    const { body } = await session.admin(path, { method });
    session.notice(verb === "Promote" ? `${model.name} now serves version ${body.version}.` : `${model.name}: rollout aborted.`);
    await session.refreshModels();
  } catch (error) {
    session.notice(`${verb} refused: ${error.message}`);
  }
}

async function activateVersion(model, version) {
  const verb = versionNumber(version) < versionNumber(model.served_version ?? "0") ? "Roll back" : "Activate";
  if (!window.confirm(`${verb} ${model.name} to version ${version}? Every replica serves it within its poll interval, and it is pinned: later jobs publish without taking over.`)) return;
  try {
    await session.admin(`/models/${encodeURIComponent(model.name)}/versions/${encodeURIComponent(version)}/activate`, { method: "POST", json: { pin: true } });
    session.notice(`${model.name} now serves version ${version} (pinned).`);
    await session.refreshModels();
  } catch (error) {
    session.notice(`${verb} refused: ${error.message}`);
  }
}

// One version's plots: confusion matrix, per-class accuracy, training curves.
session.showVersion = async (name, version) => {
  const { body } = await call(`/models/${encodeURIComponent(name)}/versions/${encodeURIComponent(version)}`);
  const meta = body.metadata;
  const labels = meta.labels ?? [];
  $("version-panel").hidden = false;
  $("version-panel").dataset.model = name;
  $("version-panel").dataset.version = version;
  $("version-title").textContent = `${name} v${version}`;
  const state = [body.served && "served here", body.current && "current", body.pinned && "pinned"].filter(Boolean).join(", ");
  $("version-facts").textContent = `${meta.architecture}, ${meta.dataset}, test accuracy ${percent(meta.test_accuracy, 2)}, ` +
    `${meta.parameters?.toLocaleString() ?? "?"} parameters, created ${when(meta.created_at)}${state ? ` — ${state}` : ""}`;
  $("confusion").replaceChildren(meta.confusion_matrix ? heatmap(meta.confusion_matrix, labels) : el("p", {}, "no confusion matrix in this version's metadata"));
  bars($("per-class"), labels.map((label) => [label, meta.per_class_accuracy?.[label] ?? 0]), null);
  const history = meta.training?.history ?? [];
  const epochs = history.map((h) => h.epoch);
  $("loss-curve").replaceChildren(lineChart("training loss", epochs, [{ name: "loss", values: history.map((h) => h.train_loss), cls: "loss" }]));
  $("accuracy-curve").replaceChildren(lineChart("test accuracy", epochs, [{ name: "accuracy", values: history.map((h) => h.test_accuracy), cls: "accuracy" }], { max: 1 }));
};

async function open() {
  $("login").hidden = true;
  $("console").hidden = false;
  try {
    await session.refreshModels();
    await startTraining(session);
    const first = [...session.models.values()].find((m) => m.served_version);
    if (first) await session.showVersion(first.name, first.served_version);
  } catch (error) {
    session.notice(`Could not load the console: ${error.message}`);
  }
}

if (session.token) open();
else signOut();
