/* domain-lm console: vanilla JS, no build step, no external requests.
 *
 * Pages (hash routes): #/tasks, #/try/<task>, #/teach/<task>, #/editor[/<task>], #/runs[/<run>].
 * Every data call carries the API key (kept in sessionStorage) as `Authorization: Bearer`, the
 * same header the REST API checks. Running and saving tasks go through the REST API itself.
 */
"use strict";

const API_ROOT = location.pathname.replace(/\/console(\/.*)?$/, "");
const CONSOLE = API_ROOT + "/console";
const KEY_STORE = "domain-lm.console.api-key";
const LANG_NAMES = { en: "English", zh: "中文" };

// --------------------------------------------------------------------------- DOM helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "html") el.innerHTML = v; // only ever used with static strings
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const $ = (sel, root = document) => root.querySelector(sel);
const view = () => $("#view");
const render = (...nodes) => view().replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined && n !== false));

function navButton(text, hash, cls, id) {
  return h("button", { type: "button", class: cls || null, id: id || null, onclick: () => (location.hash = hash) }, text);
}
const fmtMs = (ms) => (ms == null ? "–" : ms < 1000 ? `${ms.toFixed(0)} ms` : `${(ms / 1000).toFixed(2)} s`);
const fmtTime = (s) => (s ? new Date(s * 1000).toLocaleString() : "–");
const pretty = (v) => (typeof v === "string" ? v : JSON.stringify(v, null, 2));

function alertBox(kind, title, body) {
  return h("div", { class: `alert ${kind}`, role: kind === "error" ? "alert" : "status" }, h("strong", {}, title), body ? h("div", {}, body) : null);
}

function spinner(text) {
  return h("span", { class: "muted" }, h("span", { class: "spinner" }), " ", text || "Loading…");
}

// --------------------------------------------------------------------------- API client

class ApiError extends Error {
  constructor(status, detail) {
    const d = detail && typeof detail === "object" && !Array.isArray(detail) ? detail : {};
    let message = d.message || (typeof detail === "string" ? detail : "");
    if (Array.isArray(detail)) {
      // FastAPI request validation: [{loc, msg}]
      message = detail.map((e) => `${(e.loc || []).filter((x) => x !== "body").join(".")}: ${e.msg}`).join("; ");
    }
    super(message || `HTTP ${status}`);
    this.status = status;
    this.detail = d;
  }
}

function getKey() {
  return sessionStorage.getItem(KEY_STORE);
}

async function api(path, { method = "GET", json, text, contentType, asText = false } = {}) {
  const headers = { Authorization: `Bearer ${getKey() || ""}` };
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (text !== undefined) {
    headers["Content-Type"] = contentType || "text/plain";
    body = text;
  }
  const resp = await fetch(API_ROOT + path, { method, headers, body });
  if (resp.status === 401) {
    signOut("Your API key was not accepted. Enter a valid key.");
    throw new ApiError(401, { message: "missing or invalid API key" });
  }
  if (!resp.ok) {
    let detail = null;
    try {
      detail = (await resp.json()).detail;
    } catch (_) {
      /* not JSON */
    }
    throw new ApiError(resp.status, detail);
  }
  return asText ? resp.text() : resp.json();
}

// --------------------------------------------------------------------------- session

let session = null;

function showSignin(message) {
  $("#signin").classList.remove("hidden");
  const err = $("#signin-error");
  err.textContent = message || "";
  err.classList.toggle("hidden", !message);
  $("#api-key").focus();
}

function signOut(message) {
  sessionStorage.removeItem(KEY_STORE);
  session = null;
  $("#session").classList.add("hidden");
  render();
  showSignin(message);
}

async function startSession() {
  session = await api("/console/api/session");
  $("#session-label").textContent = `${session.key_id}${session.admin ? " · admin" : ""}${session.model ? " · " + session.model : ""}`;
  $("#session").classList.remove("hidden");
  $("#signin").classList.add("hidden");
}

async function onSignin(ev) {
  ev.preventDefault();
  const key = $("#api-key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORE, key);
  try {
    await startSession();
    $("#api-key").value = "";
    route();
  } catch (e) {
    if (e.status !== 401) showSignin(`Cannot reach the service: ${e.message}`);
  }
}

// --------------------------------------------------------------------------- router

const routes = { tasks: pageTasks, try: pageTry, teach: pageTeach, editor: pageEditor, runs: pageRuns };

function route() {
  if (!session) return;
  const [page, ...rest] = (location.hash.replace(/^#\/?/, "") || "tasks").split("/");
  const fn = routes[page] || pageTasks;
  const navPage = page === "try" || page === "teach" ? "tasks" : page;
  document.querySelectorAll(".nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === navPage));
  render(spinner());
  fn(...rest.map(decodeURIComponent)).catch((e) => render(alertBox("error", "Something went wrong", e.message)));
}

function pageHead(title, subtitle, ...actions) {
  return h("div", { class: "page-head" }, h("div", {}, h("h1", {}, title), subtitle ? h("p", {}, subtitle) : null), h("div", { class: "row" }, ...actions));
}

// --------------------------------------------------------------------------- tasks

function kindTag(kind) {
  return h("span", { class: `tag kind-${kind}` }, { label: "label", json: "JSON", text: "text" }[kind] || kind);
}

function inputTable(t) {
  const rows = Object.entries(t.inputs).map(([name, f]) =>
    h(
      "tr",
      {},
      h("td", {}, h("code", {}, name)),
      h("td", { class: "nowrap" }, f.type + (f.max_length ? ` ≤ ${f.max_length}` : "")),
      h("td", {}, f.required ? "yes" : "no"),
      h("td", { class: "muted" }, f.description || "")
    )
  );
  return h("table", { class: "schema" }, h("tr", {}, h("th", {}, "Input"), h("th", {}, "Type"), h("th", {}, "Required"), h("th", {}, "Description")), rows);
}

function outputSummary(t) {
  const out = t.output;
  if (out.kind === "label") return h("div", { class: "tags" }, out.labels.map((l) => h("span", { class: "tag" }, l)));
  if (out.kind === "json") {
    // The top-level fields say most of what a reader needs; the full schema is one click away.
    const sc = out.schema || {};
    const obj = sc.type === "array" ? sc.items || {} : sc;
    const fields = Object.keys(obj.properties || {});
    return h(
      "div",
      {},
      fields.length ? h("div", { class: "tags" }, h("span", { class: "small muted" }, sc.type === "array" ? "a list of" : "an object with"), fields.map((f) => h("span", { class: "tag" }, f))) : null,
      h("details", {}, h("summary", { class: "small" }, "JSON schema"), h("pre", { class: "codebox" }, JSON.stringify(out.schema, null, 2)))
    );
  }
  return h("span", { class: "small muted" }, `Free text${out.schema && out.schema.maxLength ? `, at most ${out.schema.maxLength} characters` : ""}`);
}

async function pageTasks() {
  const data = await api("/console/api/tasks");
  const cards = data.tasks.map((t) =>
    h(
      "article",
      { class: "card", "data-task": t.name, id: `task-${t.name}` },
      h("div", { class: "row" }, h("h2", {}, t.name), h("span", { class: "spacer" }), h("span", { class: "tag" }, `v${t.version}`)),
      h("p", {}, t.description),
      h("div", { class: "tags" }, kindTag(t.output.kind), h("span", { class: "tag" }, t.metric), t.languages.map((l) => h("span", { class: "tag" }, LANG_NAMES[l] || l)), t.adapter ? h("span", { class: "tag" }, `adapter: ${t.adapter}`) : null),
      h("h3", {}, "Inputs"),
      inputTable(t),
      h("h3", {}, "Answer"),
      outputSummary(t),
      t.serving ? h("div", { class: "serving small", "data-engine": t.serving.engine }, h("strong", {}, `Served by ${servingName(t.serving)}. `), t.serving.why) : null,
      h(
        "div",
        { class: "actions" },
        navButton("Try it", `#/try/${encodeURIComponent(t.name)}`, "primary"),
        session.admin ? navButton("Teach", `#/teach/${encodeURIComponent(t.name)}`, null, `teach-${t.name}`) : null,
        session.admin ? navButton("Edit template", `#/editor/${encodeURIComponent(t.name)}`) : null
      )
    )
  );
  const problems = data.problems.length
    ? alertBox("warn", `${data.problems.length} template file(s) could not be loaded`, h("ul", {}, data.problems.map((p) => h("li", {}, `${p.file}${p.line ? ":" + p.line : ""}: ${p.message}`))))
    : null;
  render(
    pageHead(
      "Tasks",
      `${data.tasks.length} task(s) available to your key. Each answer is typed and checked against the task's contract.`,
      session.admin ? navButton("New task", "#/editor", "accent", "new-task-btn") : null
    ),
    problems,
    h("div", { class: "cards", id: "task-list" }, cards)
  );
}

function inputControl(name, f) {
  const id = `in-${name}`;
  const long = f.type === "list" || f.type === "string" && (!f.max_length || f.max_length > 200);
  let control;
  if (f.type === "boolean") control = h("select", { id, name }, h("option", { value: "true" }, "true"), h("option", { value: "false" }, "false"));
  else if (f.type === "integer" || f.type === "number") control = h("input", { type: "number", id, name, step: f.type === "integer" ? "1" : "any" });
  else if (long) control = h("textarea", { id, name, rows: f.type === "list" ? 4 : 7, maxlength: f.type === "string" && f.max_length ? f.max_length : null });
  else control = h("input", { type: "text", id, name, maxlength: f.max_length || null });
  return h(
    "div",
    { class: "field", "data-field": name },
    h("label", { for: id }, name, h("span", { class: "hint" }, [f.type, f.type === "list" ? "one item per line" : null, f.required ? null : "optional"].filter(Boolean).join(" · "))),
    control,
    f.description ? h("div", { class: "small muted" }, f.description) : null,
    h("div", { class: "field-error hidden" })
  );
}

function readInputs(form, t) {
  const out = {};
  for (const [name, f] of Object.entries(t.inputs)) {
    const raw = form.querySelector(`#in-${CSS.escape(name)}`).value;
    if (raw === "" && !f.required) continue;
    if (f.type === "list") out[name] = raw.split("\n").map((s) => s.trim()).filter(Boolean);
    else if (f.type === "integer") out[name] = raw === "" ? raw : parseInt(raw, 10);
    else if (f.type === "number") out[name] = raw === "" ? raw : parseFloat(raw);
    else if (f.type === "boolean") out[name] = raw === "true";
    else out[name] = raw;
  }
  return out;
}

function fillInputs(form, t, values) {
  for (const [name, f] of Object.entries(t.inputs)) {
    const el = form.querySelector(`#in-${CSS.escape(name)}`);
    const v = values[name];
    el.value = v === undefined || v === null ? "" : f.type === "list" ? v.join("\n") : String(v);
  }
}

function answerView(t, answer) {
  let main;
  if (t.output.kind === "label") main = h("span", { class: "label-answer", id: "result-output" }, answer.output);
  else if (t.output.kind === "json") main = h("pre", { class: "codebox", id: "result-output" }, JSON.stringify(answer.output, null, 2));
  else main = h("div", { class: "codebox", id: "result-output" }, answer.output);
  const u = answer.usage || {};
  return h(
    "div",
    { id: "result" },
    h("h3", {}, "Typed output"),
    main,
    h(
      "div",
      { class: "metrics" },
      h("div", { class: "metric" }, h("div", { class: "k" }, "Latency"), h("div", { class: "v", id: "result-latency" }, fmtMs(answer.latency_ms))),
      h("div", { class: "metric" }, h("div", { class: "k" }, "Tokens in / out"), h("div", { class: "v" }, `${u.prompt_tokens ?? "–"} / ${u.completion_tokens ?? "–"}`)),
      h("div", { class: "metric" }, h("div", { class: "k" }, "Model"), h("div", { class: "v small" }, answer.model)),
      h("div", { class: "metric" }, h("div", { class: "k" }, "Adapter · version"), h("div", { class: "v small" }, `${answer.adapter || "base"} · v${answer.version}`)),
      h("div", { class: "metric" }, h("div", { class: "k" }, "Engine"), h("div", { class: "v small", id: "result-engine" }, answer.engine || "llm")),
      answer.confidence != null
        ? h("div", { class: "metric" }, h("div", { class: "k" }, answer.calibrated ? "Confidence (calibrated)" : "Confidence"), h("div", { class: "v", id: "result-confidence" }, `${(answer.confidence * 100).toFixed(1)}%${answer.abstained ? " · abstained" : ""}`))
        : null
    ),
    h("h3", {}, "Raw model text"),
    h("pre", { class: "codebox", id: "result-raw" }, answer.raw_text)
  );
}

function errorView(e, form) {
  const d = e.detail || {};
  if (d.field && form) {
    const name = String(d.field).replace(/^input\./, "");
    const box = form.querySelector(`[data-field="${CSS.escape(name)}"]`);
    if (box) {
      box.querySelector("input, textarea, select").classList.add("invalid");
      const msg = box.querySelector(".field-error");
      msg.textContent = e.message;
      msg.classList.remove("hidden");
    }
  }
  const title = { 422: "Invalid input", 403: "Not allowed", 404: "Unknown task", 429: "The service is busy — try again in a moment", 502: "The model's answer broke the task contract", 503: "The model is not ready yet", 504: "Timed out" }[e.status] || `Request failed (HTTP ${e.status})`;
  const field = d.field ? `${String(d.field).replace(/^input\./, "")}: ` : "";
  return h("div", { id: "result-error" }, alertBox("error", title, h("div", {}, field + e.message, d.raw_text !== undefined ? h("pre", { class: "codebox" }, d.raw_text) : null)));
}

async function pageTry(name) {
  const t = await api(`/console/api/tasks/${encodeURIComponent(name)}`);
  const result = h("div", { class: "panel", id: "result-panel" }, h("h2", {}, "Answer"), h("div", { class: "placeholder", id: "result-placeholder" }, "Fill in the inputs and press Run. The typed answer, the raw model text and the latency appear here."));
  const langSel = h("select", { id: "lang" }, t.languages.map((l) => h("option", { value: l }, LANG_NAMES[l] || l)));
  const examples = () => t.examples.filter((ex) => ex.lang === langSel.value);
  let exampleIdx = 0;
  const form = h(
    "form",
    { id: "try-form", novalidate: true },
    Object.entries(t.inputs).map(([n, f]) => inputControl(n, f)),
    h(
      "div",
      { class: "row", style: "margin-top:16px" },
      h("button", { type: "submit", class: "primary", id: "run-btn" }, "Run"),
      h("button", {
        type: "button",
        id: "example-btn",
        onclick: () => {
          const ex = examples();
          if (!ex.length) return;
          fillInputs(form, t, ex[exampleIdx++ % ex.length].inputs);
        },
      }, "Fill an example"),
      h("span", { class: "spacer" }),
      h("label", { for: "lang", style: "margin:0" }, "Language"),
      langSel
    )
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    form.querySelectorAll(".invalid").forEach((x) => x.classList.remove("invalid"));
    form.querySelectorAll(".field-error").forEach((x) => x.classList.add("hidden"));
    const btn = $("#run-btn");
    btn.disabled = true;
    result.replaceChildren(h("h2", {}, "Answer"), spinner("Asking the model…"));
    try {
      const answer = await api(`/v1/tasks/${encodeURIComponent(t.name)}`, { method: "POST", json: { input: readInputs(form, t), lang: langSel.value, confidence: true } });
      result.replaceChildren(h("h2", {}, "Answer"), answerView(t, answer));
    } catch (e) {
      result.replaceChildren(h("h2", {}, "Answer"), errorView(e, form));
    } finally {
      btn.disabled = false;
    }
  });
  render(
    pageHead(t.name, t.description, h("span", { class: "tag" }, `version ${t.version}`), kindTag(t.output.kind), navButton("All tasks", "#/tasks")),
    h("div", { class: "grid-2" }, h("div", { class: "panel" }, h("h2", {}, "Input"), form, h("h3", {}, "Answer contract"), outputSummary(t)), result)
  );
}

// --------------------------------------------------------------------------- template editor

function lineGutter(textarea, gutter, badLines) {
  const n = textarea.value.split("\n").length;
  const bad = new Set(badLines);
  gutter.replaceChildren(...Array.from({ length: n }, (_, i) => h("div", { class: bad.has(i + 1) ? "bad" : null }, i + 1)));
  gutter.scrollTop = textarea.scrollTop;
}

function gotoLine(textarea, line) {
  const lines = textarea.value.split("\n");
  const start = lines.slice(0, line - 1).reduce((a, l) => a + l.length + 1, 0);
  textarea.focus();
  textarea.setSelectionRange(start, start + (lines[line - 1] || "").length);
  const lh = parseFloat(getComputedStyle(textarea).lineHeight) || 19;
  textarea.scrollTop = Math.max(0, (line - 5) * lh);
}

function messagesView(messages) {
  return h("div", {}, messages.map((m) => h("div", { class: "msg" }, h("div", { class: "role" }, m.role), h("pre", {}, m.content))));
}

function dryItemView(item, i) {
  let outcome;
  if (item.error) outcome = alertBox(item.error.kind === "contract" ? "warn" : "error", item.error.kind === "contract" ? "The model's answer broke the contract" : "Error", h("div", {}, item.error.message, item.error.raw !== undefined ? h("pre", {}, item.error.raw) : null));
  else if (item.answer)
    outcome = h(
      "div",
      { class: "io" },
      h("span", { class: "k" }, "Answer"),
      h(
        "div",
        {},
        h("pre", { class: "dry-answer", style: "display:inline" }, pretty(item.answer.output)),
        item.expected !== null && item.expected !== undefined
          ? JSON.stringify(item.answer.output) === JSON.stringify(item.expected)
            ? h("span", { class: "match yes" }, "matches the example")
            : h("span", { class: "match no" }, "differs from the example")
          : null
      ),
      h("span", { class: "k" }, "Raw text"),
      h("pre", {}, item.answer.raw_text),
      h("span", { class: "k" }, "Latency"),
      h("span", {}, fmtMs(item.answer.latency_ms))
    );
  else outcome = h("div", { class: "small muted" }, "Rendered only (the model is not loaded).");
  return h(
    "div",
    { class: "dry-item" },
    h("div", { class: "io" }, h("span", { class: "k" }, `Input ${i + 1}`), h("pre", {}, pretty(item.inputs)), item.expected !== null && item.expected !== undefined ? [h("span", { class: "k" }, "Expected"), h("pre", {}, pretty(item.expected))] : null),
    outcome,
    item.messages ? h("details", {}, h("summary", { class: "small" }, "Prompt sent to the model"), messagesView(item.messages)) : null
  );
}

async function pageEditor(name) {
  if (!session.admin) {
    render(pageHead("Template editor"), alertBox("warn", "Your key cannot change templates", "Ask an administrator for a key with the admin right."));
    return;
  }
  const state = { name: name || null, checked: null, dryRunText: null, dryRunOk: false };
  let initial;
  let history = [];
  if (name) {
    const t = await api(`/console/api/tasks/${encodeURIComponent(name)}`);
    history = t.history;
    initial = (await api(`/console/api/tasks/${encodeURIComponent(name)}/versions/${t.version}/source`)).draft;
  } else {
    initial = (await api("/console/api/templates/starter")).yaml;
  }

  const textarea = h("textarea", { id: "yaml-editor", spellcheck: "false", autocomplete: "off", "aria-label": "Template YAML" });
  textarea.value = initial;
  const gutter = h("div", { class: "gutter", "aria-hidden": "true" });
  const chip = h("span", { class: "status-chip", id: "check-status" }, "Not checked");
  const errors = h("ul", { class: "error-list", id: "template-errors" });
  const notice = h("div", { id: "editor-notice" });
  const validateBtn = h("button", { type: "button", id: "validate-btn" }, "Validate");
  const dryBtn = h("button", { type: "button", id: "dry-run-btn", class: "primary" }, "Dry run");
  const saveBtn = h("button", { type: "button", id: "save-btn", class: "accent", disabled: true, title: "Run a successful dry run of this exact text first" }, "Save");
  const langSel = h("select", { id: "dry-lang" }, h("option", { value: "en" }, "English"));
  const customToggle = h("input", { type: "checkbox", id: "dry-custom" });
  const customInput = h("textarea", { id: "dry-input", class: "code hidden", rows: 4, placeholder: '{"text": "…"}' });
  const dryOut = h("div", { id: "dry-results" }, h("div", { class: "placeholder" }, "A dry run renders the draft on its examples (or your input) and asks the model, without saving anything."));
  const historyBox = h("div", { id: "version-history" });

  const setLanguages = (langs) => {
    const cur = langSel.value;
    langSel.replaceChildren(...langs.map((l) => h("option", { value: l }, LANG_NAMES[l] || l)));
    if (langs.includes(cur)) langSel.value = cur;
  };

  const showCheck = (res) => {
    state.checked = res;
    errors.replaceChildren(
      ...res.errors.map((e) =>
        h("li", {}, e.line ? h("span", { class: "line", onclick: () => gotoLine(textarea, e.line) }, `line ${e.line}`) : h("span", { class: "line" }, "template"), h("span", {}, e.message))
      )
    );
    lineGutter(textarea, gutter, res.errors.map((e) => e.line).filter(Boolean));
    if (res.ok) {
      const t = res.template;
      chip.className = "status-chip ok";
      chip.textContent = res.unchanged
        ? `Valid · same as the current ${t.name} v${t.current_version}`
        : t.current_version
        ? `Valid · saves as ${t.name} v${t.version} (current v${t.current_version})`
        : `Valid · new task ${t.name} v${t.version}`;
      setLanguages(t.languages);
    } else {
      chip.className = "status-chip bad";
      chip.textContent = `${res.errors.length} problem(s)`;
    }
    // Saving needs a passed dry run of this exact text, and a change worth a new version.
    saveBtn.disabled = !(res.ok && !res.unchanged && state.dryRunOk && state.dryRunText === textarea.value);
  };

  let checkSeq = 0;
  const validate = async () => {
    const seq = ++checkSeq;
    const res = await api("/console/api/templates/check", { method: "POST", json: { yaml: textarea.value } });
    if (seq === checkSeq) showCheck(res); // a slower, older answer must not overwrite a newer one
    return res;
  };

  let timer = null;
  textarea.addEventListener("input", () => {
    lineGutter(textarea, gutter, []);
    saveBtn.disabled = true;
    chip.className = "status-chip";
    chip.textContent = "Editing…";
    clearTimeout(timer);
    timer = setTimeout(validate, 700);
  });
  textarea.addEventListener("scroll", () => (gutter.scrollTop = textarea.scrollTop));
  textarea.addEventListener("keydown", (ev) => {
    if (ev.key === "Tab") {
      ev.preventDefault();
      textarea.setRangeText("  ", textarea.selectionStart, textarea.selectionEnd, "end");
      textarea.dispatchEvent(new Event("input"));
    }
  });
  customToggle.addEventListener("change", () => customInput.classList.toggle("hidden", !customToggle.checked));
  validateBtn.addEventListener("click", () => { notice.replaceChildren(); validate(); });

  dryBtn.addEventListener("click", async () => {
    notice.replaceChildren();
    let input = null;
    if (customToggle.checked) {
      try {
        input = JSON.parse(customInput.value || "{}");
      } catch (e) {
        dryOut.replaceChildren(alertBox("error", "The input is not valid JSON", e.message));
        return;
      }
    }
    const text = textarea.value;
    dryBtn.disabled = true;
    dryOut.replaceChildren(spinner("Rendering and asking the model…"));
    try {
      const res = await api("/console/api/templates/dry-run", { method: "POST", json: { yaml: text, lang: langSel.value, input } });
      // Inputs or rendering failing means the template is not ready; a model answer that breaks the
      // contract is shown as a warning (the template is fine, the model may need training).
      const blocking = res.items.filter((it) => it.error && it.error.kind !== "contract" && it.error.kind !== "engine");
      state.dryRunOk = res.ok && res.items.length > 0 && blocking.length === 0;
      state.dryRunText = text;
      showCheck(res);
      const head = !res.ok
        ? alertBox("error", "Fix the template first", "See the problems under the editor.")
        : !res.items.length
        ? alertBox("warn", "Nothing to run", `The draft has no examples in ${LANG_NAMES[langSel.value] || langSel.value}; tick "my own input" and give one.`)
        : state.dryRunOk
        ? alertBox("ok", "Dry run passed", `${res.items.length} input(s) rendered${res.engine ? " and answered" : ""}. You can save this version.`)
        : alertBox("error", "Dry run failed", "An input could not be rendered; see below.");
      dryOut.replaceChildren(head, ...res.items.map(dryItemView));
    } catch (e) {
      dryOut.replaceChildren(alertBox("error", "Dry run failed", e.message));
    } finally {
      dryBtn.disabled = false;
    }
  });

  saveBtn.addEventListener("click", async () => {
    const t = state.checked && state.checked.template;
    if (!t) return;
    saveBtn.disabled = true;
    try {
      const res = await api(`/v1/tasks/${encodeURIComponent(t.name)}`, { method: "PUT", text: textarea.value, contentType: "application/yaml" });
      notice.replaceChildren(
        alertBox("ok", `Saved ${res.name} version ${res.version}`, h("span", {}, "It is served now, without a restart. ", h("a", { href: `#/try/${encodeURIComponent(res.name)}`, id: "saved-try-link" }, "Try it"), " · ", h("a", { href: "#/tasks" }, "All tasks")))
      );
      state.name = res.name;
      view().querySelector("h1").textContent = `Edit ${res.name}`;
      state.dryRunOk = false; // the saved text is the current version now: saving it again would only add a copy
      history = (await api(`/console/api/tasks/${encodeURIComponent(res.name)}`)).history;
      renderHistory();
      if (location.hash !== `#/editor/${res.name}`) history_replace(res.name);
      await validate();
    } catch (e) {
      notice.replaceChildren(alertBox("error", "Not saved", e.message));
      saveBtn.disabled = false;
    }
  });

  const renderHistory = () => {
    if (!state.name || !history.length) {
      historyBox.replaceChildren(h("p", { class: "muted small" }, "A new task has no history yet. Every save keeps the previous version available."));
      return;
    }
    historyBox.replaceChildren(
      h(
        "ul",
        { class: "versions" },
        history.map((v) =>
          h(
            "li",
            { "data-version": v.version },
            h("strong", {}, `v${v.version}`),
            v.current ? h("span", { class: "tag kind-text" }, "current") : null,
            h("span", { class: "small muted", style: "flex:1" }, v.description),
            h("button", {
              type: "button",
              class: "small",
              onclick: async () => {
                const src = await api(`/console/api/tasks/${encodeURIComponent(state.name)}/versions/${v.version}/source`);
                textarea.value = src.draft;
                textarea.dispatchEvent(new Event("input"));
                notice.replaceChildren(alertBox("warn", `Loaded version ${v.version} into the editor`, "Saving it registers it again as a new version."));
              },
            }, "Load")
          )
        )
      )
    );
  };

  render(
    pageHead(
      name ? `Edit ${name}` : "New task",
      "Write the task as YAML. Problems are shown as you type; dry-run the draft before saving.",
      navButton("Start a new task", "#/editor")
    ),
    h(
      "div",
      { class: "grid-editor" },
      h(
        "div",
        { class: "panel" },
        h("div", { class: "row", style: "margin-bottom:10px" }, h("h2", { style: "margin:0" }, "Template"), h("span", { class: "spacer" }), chip),
        h("div", { class: "editor" }, gutter, textarea),
        errors,
        notice,
        h("div", { class: "row", style: "margin-top:12px" }, validateBtn, dryBtn, h("span", { class: "spacer" }), saveBtn)
      ),
      h(
        "div",
        {},
        h(
          "div",
          { class: "panel" },
          h("h2", {}, "Dry run"),
          h("div", { class: "row" }, h("label", { for: "dry-lang", style: "margin:0" }, "Language"), langSel, h("span", { class: "spacer" }), h("label", { for: "dry-custom", style: "margin:0;font-weight:400" }, customToggle, " my own input (JSON)")),
          customInput,
          h("div", { style: "margin-top:12px" }, dryOut)
        ),
        h("div", { class: "panel" }, h("h2", {}, "Version history"), historyBox)
      )
    )
  );
  renderHistory();
  lineGutter(textarea, gutter, []);
  await validate();
}

function history_replace(name) {
  // Reflect the saved task in the URL without re-rendering the editor.
  window.history.replaceState(null, "", `#/editor/${encodeURIComponent(name)}`);
}


// --------------------------------------------------------------------------- teach a task

const SYSTEM_NAMES = { zero_shot: "Zero-shot", few_shot: "Few-shot", adapter: "Adapter", classical: "Classical (TF-IDF + LR)" };

function servingName(sv) {
  if (sv.engine === "classical") return "the classical model";
  if (sv.adapter) return `adapter ${sv.adapter}`;
  return sv.few_shot ? `the base model, ${sv.few_shot}-shot` : "the base model, zero-shot";
}

function comparisonTable(version, serving) {
  const metric = version.metric || "score";
  const scored = Object.entries(version.systems).filter(([, s]) => typeof s.score === "number");
  const best = Math.max(...scored.map(([, s]) => s.score));
  const rows = ["zero_shot", "few_shot", "adapter", "classical"]
    .filter((k) => version.systems[k])
    .map((k) => {
      const s = version.systems[k];
      const c = s.calibration || {};
      const serves = serving && serving.store_version === version.version && serving.system === k;
      return h(
        "tr",
        { "data-system": k, class: serves ? "selected" : null },
        h("td", {}, SYSTEM_NAMES[k], s.k ? h("span", { class: "muted small" }, ` (k=${s.k})`) : null, serves ? h("span", { class: "tag", style: "margin-left:6px" }, "serving") : null),
        h("td", { class: `num${s.score === best ? " best" : ""}` }, s.score.toFixed(3)),
        h("td", { class: "num small" }, `[${s.ci[0].toFixed(3)}, ${s.ci[1].toFixed(3)}]`),
        h("td", { class: "num" }, s.n),
        h("td", { class: "num small" }, c.ece_after != null ? `${c.ece_before.toFixed(3)} → ${c.ece_after.toFixed(3)}` : "–"),
        h("td", { class: "num small" }, c.calibrated ? c.temperature.toFixed(2) : "–"),
        h("td", { class: "num small" }, `${s.seconds.toFixed(1)} s`)
      );
    });
  const diffs = Object.entries(version.diffs || {}).map(([pair, d]) => h("li", {}, `${pair.replace("-", " − ")}: ${d.diff >= 0 ? "+" : ""}${d.diff.toFixed(3)} [${d.ci[0].toFixed(3)}, ${d.ci[1].toFixed(3)}]`));
  const ex = version.examples || {};
  return h(
    "div",
    { class: "comparison", "data-version": version.version },
    h("p", { class: "small muted" }, `Version ${version.version}${version.adapter ? ` (adapter ${version.adapter})` : ""}: ${ex.uploaded} examples, ${ex.train} train / ${ex.held} held out, scored on ${ex.evaluated}. ${metric} with 95% bootstrap intervals; calibration by temperature scaling (ECE cross-fitted).`),
    h("table", { class: "data", id: `comparison-${version.version}` }, h("tr", {}, h("th", {}, "System"), h("th", { class: "num" }, metric), h("th", { class: "num" }, "95% CI"), h("th", { class: "num" }, "n"), h("th", { class: "num" }, "ECE before → after"), h("th", { class: "num" }, "Temperature"), h("th", { class: "num" }, "Time")), rows),
    diffs.length ? h("ul", { class: "small" }, diffs) : null,
    version.comparison_error ? alertBox("warn", "The zero-/few-shot comparison failed", version.comparison_error) : null
  );
}

function jobView(job) {
  const pct = job.progress != null ? Math.round(job.progress * 100) : null;
  const kind = job.state === "failed" ? "error" : job.state === "succeeded" ? "ok" : job.state === "cancelled" ? "warn" : "info";
  return h(
    "div",
    { id: "job", "data-state": job.state },
    h("div", { class: "row" }, h("strong", { id: "job-state" }, job.state), h("span", { class: "muted", id: "job-phase" }, ` · ${job.phase}`), h("span", { class: "spacer" }), h("span", { class: "small muted" }, `${job.wall_s.toFixed(0)} s`)),
    pct != null && job.state === "running" ? h("progress", { max: "100", value: String(pct), id: "job-progress" }) : null,
    h("div", { class: "small", id: "job-message" }, job.message),
    job.upload_to_serving_s != null ? h("div", { class: "small muted" }, `Upload to serving: ${job.upload_to_serving_s.toFixed(0)} s (version ${job.version})`) : null,
    job.error ? alertBox(kind === "error" ? "error" : "warn", `Job ${job.state}`, job.error) : null
  );
}

async function pageTeach(name) {
  const [t, training] = await Promise.all([api(`/console/api/tasks/${encodeURIComponent(name)}`), api(`/v1/tasks/${encodeURIComponent(name)}/training`)]);
  const servingBox = h("div", { id: "serving" });
  const showServing = (sv) =>
    servingBox.replaceChildren(sv ? h("div", { class: "alert ok" }, h("strong", {}, `Served by ${servingName(sv)}`), h("div", { id: "serving-why" }, sv.why)) : spinner("The model is loading"));
  showServing(training.serving);
  const jobBox = h("div", { class: "panel hidden", id: "job-panel" }, h("h2", {}, "Training job"), h("div", { id: "job-body" }));
  const compareBox = h("div", { id: "comparisons" });
  const showVersions = (tr) => {
    compareBox.replaceChildren(
      ...(tr.versions.length
        ? [comparisonTable(tr.versions[0], tr.serving), tr.versions.length > 1 ? h("details", {}, h("summary", { class: "small" }, `${tr.versions.length - 1} older version(s)`), tr.versions.slice(1).map((v) => comparisonTable(v, tr.serving))) : null]
        : [h("div", { class: "placeholder" }, "No examples uploaded yet: upload labelled examples to compare zero-shot, few-shot, an adapter and the classical model on held-out examples.")])
    );
  };
  showVersions(training);

  const file = h("input", { type: "file", id: "examples-file", accept: ".jsonl,.json,.csv,.ndjson" });
  const labelField = h("input", { type: "text", id: "label-field", value: "label" });
  const fieldsMap = h("input", { type: "text", id: "fields-map", placeholder: '{"text": "sentence"}' });
  const labelMap = h("input", { type: "text", id: "label-map", placeholder: '{"0": "negative", "1": "positive"}' });
  const trainAdapter = h("input", { type: "checkbox", id: "train-adapter", checked: true });
  const uploadMsg = h("div", { id: "upload-result" });
  let polling = null;

  async function poll(jobId) {
    const job = await api(`/v1/jobs/${encodeURIComponent(jobId)}`);
    $("#job-body").replaceChildren(jobView(job));
    if (["succeeded", "failed", "cancelled"].includes(job.state)) {
      clearInterval(polling);
      polling = null;
      $("#upload-btn").disabled = false;
      const tr = await api(`/v1/tasks/${encodeURIComponent(name)}/training`);
      showServing(tr.serving);
      showVersions(tr);
    }
  }

  async function onUpload(ev) {
    ev.preventDefault();
    const f = file.files[0];
    if (!f) return uploadMsg.replaceChildren(alertBox("error", "Choose a file", "JSON lines, JSON or CSV: one labelled example per row."));
    const fmt = f.name.toLowerCase().endsWith(".csv") ? "csv" : f.name.toLowerCase().endsWith(".json") ? "json" : "jsonl";
    const params = new URLSearchParams({ format: fmt, label_field: labelField.value || "label", adapter: trainAdapter.checked ? "true" : "false" });
    if (fieldsMap.value.trim()) params.set("fields", fieldsMap.value.trim());
    if (labelMap.value.trim()) params.set("label_map", labelMap.value.trim());
    $("#upload-btn").disabled = true;
    uploadMsg.replaceChildren(spinner("Checking the file"));
    try {
      const ctype = { csv: "text/csv", json: "application/json", jsonl: "application/jsonl" }[fmt];
      const res = await api(`/v1/tasks/${encodeURIComponent(name)}/examples?${params}`, { method: "POST", text: await f.text(), contentType: ctype });
      uploadMsg.replaceChildren(alertBox("ok", `Accepted: ${res.examples} examples`, `${res.train} for training, ${res.held_out} held out for the comparison${res.duplicates ? `, ${res.duplicates} duplicates dropped` : ""}. Job ${res.job}.`));
      jobBox.classList.remove("hidden");
      polling = setInterval(() => poll(res.job).catch(() => {}), 1000);
      await poll(res.job);
    } catch (e) {
      $("#upload-btn").disabled = false;
      const problems = (e.detail && e.detail.problems) || [];
      uploadMsg.replaceChildren(alertBox("error", e.status === 422 ? "The file cannot be used" : `Upload refused (HTTP ${e.status})`, h("div", {}, e.message, problems.length ? h("ul", { id: "upload-problems" }, problems.map((p) => h("li", {}, `row ${p.row}: ${p.message}`))) : null)));
    }
  }

  const choose = async (choice, extra) => {
    const msg = $("#serve-result");
    msg.replaceChildren(spinner("Registering"));
    try {
      const res = await api(`/console/api/tasks/${encodeURIComponent(name)}/serve`, { method: "POST", json: { choice, ...(extra || {}) } });
      msg.replaceChildren(alertBox("ok", `Template version ${res.version} registered`, res.serving ? res.serving.why : ""));
      showServing(res.serving);
      showVersions(await api(`/v1/tasks/${encodeURIComponent(name)}/training`));
    } catch (e) {
      msg.replaceChildren(alertBox("error", `Not changed (HTTP ${e.status})`, e.message));
    }
  };
  const serveButtons = h(
    "div",
    { class: "row", id: "serve-buttons" },
    [["auto", "Auto (classical when as good)"], ["adapter", "Adapter"], ["few_shot", "Few-shot"], ["zero_shot", "Zero-shot"], ["classical", "Classical"]].map(([c, label]) =>
      h("button", { type: "button", id: `serve-${c}`, onclick: () => choose(c) }, label)
    )
  );
  const labels = t.output.labels;
  render(
    pageHead(`Teach ${t.name}`, "Upload labelled examples: the service trains an adapter while it keeps serving, compares it with zero-shot, few-shot and a classical model on held-out examples, and serves the new version without a restart.", navButton("Try it", `#/try/${encodeURIComponent(name)}`)),
    servingBox,
    h(
      "div",
      { class: "grid-2" },
      h(
        "div",
        { class: "panel" },
        h("h2", {}, "Upload examples"),
        h("p", { class: "small muted" }, `One example per row with the task's inputs (${Object.keys(t.inputs).join(", ")}) and its ${labels ? "label (" + labels.join(" / ") + ")" : "answer"}. The whole file replaces the previous examples.`),
        h(
          "form",
          { id: "upload-form", onsubmit: onUpload },
          h("div", { class: "field" }, h("label", { for: "examples-file" }, "File (JSON lines, JSON or CSV)"), file),
          h("div", { class: "field" }, h("label", { for: "label-field" }, "Label column"), labelField),
          h("div", { class: "field" }, h("label", { for: "fields-map" }, "Input columns", h("span", { class: "hint" }, "optional JSON: input → column")), fieldsMap),
          h("div", { class: "field" }, h("label", { for: "label-map" }, "Label mapping", h("span", { class: "hint" }, "optional JSON: value → label")), labelMap),
          h("div", { class: "field" }, h("label", {}, trainAdapter, " Train an adapter (otherwise: few-shot pool and classical model only)")),
          h("button", { type: "submit", class: "primary", id: "upload-btn" }, "Upload and train")
        ),
        uploadMsg
      ),
      h("div", {}, jobBox, h("div", { class: "panel" }, h("h2", {}, "Choose what serves"), h("p", { class: "small muted" }, "Registers the next template version with that choice (versioned and audited, like a template edit)."), serveButtons, h("div", { id: "serve-result" })))
    ),
    h("div", { class: "panel" }, h("h2", {}, "Held-out comparison"), compareBox)
  );
}

// --------------------------------------------------------------------------- runs

function evalTable(table) {
  const head = h("tr", {}, h("th", {}, "Task"), h("th", {}, "Metric"), table.systems.map((s) => h("th", { class: "num" }, s)));
  const rows = table.rows.map((r) => {
    const vals = table.systems.map((s) => (r.scores[s] && typeof r.scores[s].score === "number" ? r.scores[s].score : null));
    const best = Math.max(...vals.filter((v) => v !== null));
    return h(
      "tr",
      {},
      h("td", {}, r.task, r.lang ? h("span", { class: "muted small" }, ` (${r.lang})`) : null),
      h("td", { class: "muted" }, r.headline),
      table.systems.map((s, i) => {
        const sc = r.scores[s];
        if (!sc) return h("td", { class: "num muted" }, "–");
        if (sc.skipped) return h("td", { class: "num muted", title: sc.skipped }, "skipped");
        const extra = sc.invalid ? ` · ${sc.invalid}/${sc.n} invalid` : "";
        return h(
          "td",
          { class: `num${vals[i] === best && table.systems.length > 1 ? " best" : ""}`, title: `n=${sc.n ?? "?"}${extra}` },
          vals[i].toFixed(3),
          sc.invalid ? h("div", { class: "small muted" }, `${sc.invalid}/${sc.n} invalid`) : null
        );
      })
    );
  });
  return h("div", { class: "eval-table" }, h("div", { class: "small muted", style: "margin-bottom:6px" }, table.file), h("table", { class: "data" }, head, rows));
}

async function pageRuns(name) {
  const data = await api("/console/api/runs");
  const list = data.runs.length
    ? h(
        "table",
        { class: "data", id: "runs-table" },
        h("tr", {}, h("th", {}, "Run"), h("th", {}, "Stages"), h("th", {}, "Finished"), h("th", {}, "Report"), h("th", {}, "Evaluation")),
        data.runs.map((r) =>
          h(
            "tr",
            { class: `clickable${r.name === name ? " selected" : ""}`, "data-run": r.name, onclick: () => (location.hash = `#/runs/${encodeURIComponent(r.name)}`) },
            h("td", {}, h("strong", {}, r.name)),
            h("td", {}, h("div", { class: "tags" }, r.stages.map((s) => h("span", { class: "tag" }, s)))),
            h("td", { class: "muted" }, fmtTime(r.finished_at)),
            h("td", {}, r.has_report ? "yes" : h("span", { class: "muted" }, "not yet")),
            h("td", {}, r.has_eval ? "yes" : h("span", { class: "muted" }, "none"))
          )
        )
      )
    : h("div", { class: "placeholder" }, `No runs in ${data.runs_dir} yet. Start one with `, h("code", {}, "domain-lm pipeline run"), ".");
  const parts = [pageHead("Runs & evaluation", `Pipeline runs in ${data.runs_dir}: stage metrics, evaluation tables and the full report.`), h("div", { class: "panel" }, list)];
  if (name) {
    const run = await api(`/console/api/runs/${encodeURIComponent(name)}`);
    const stages = h(
      "table",
      { class: "data" },
      h("tr", {}, h("th", {}, "Stage"), h("th", { class: "num" }, "Duration"), h("th", {}, "Key metrics")),
      run.stages.map((s) =>
        h(
          "tr",
          {},
          h("td", {}, s.stage),
          h("td", { class: "num" }, `${s.duration_s.toFixed(1)} s`),
          h("td", { class: "small" }, Object.entries(s.metrics).slice(0, 6).map(([k, v]) => `${k}=${typeof v === "number" ? +v.toFixed(4) : v}`).join(" · "))
        )
      )
    );
    parts.push(h("div", { class: "panel", id: "run-stages" }, h("h2", {}, `${run.name} · stages`), stages));
    parts.push(
      h("div", { class: "panel", id: "run-eval" }, h("h2", {}, "Evaluation"), run.eval.length ? run.eval.map(evalTable) : h("p", { class: "muted" }, "This run has no evaluation tables."))
    );
    if (run.has_report) {
      const frame = h("iframe", { class: "report", id: "run-report", sandbox: "", title: `Report of ${run.name}` });
      parts.push(h("div", { class: "panel" }, h("h2", {}, "Report"), frame));
      api(`/console/api/runs/${encodeURIComponent(name)}/report`, { asText: true }).then((html) => (frame.srcdoc = html));
    }
  }
  render(...parts);
}

// --------------------------------------------------------------------------- start

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", async () => {
  $("#signin-form").addEventListener("submit", onSignin);
  $("#signout-btn").addEventListener("click", () => signOut());
  if (!getKey()) {
    // A service started with --no-auth answers without a key: no sign-in then.
    const probe = await fetch(CONSOLE + "/api/session").catch(() => null);
    if (probe && probe.ok) {
      session = await probe.json();
      $("#session-label").textContent = `no API keys (development) · ${session.model || "model loading"}`;
      $("#session").classList.remove("hidden");
      $("#signout-btn").classList.add("hidden");
      return route();
    }
    return showSignin();
  }
  try {
    await startSession();
    route();
  } catch (e) {
    if (e.status !== 401) showSignin(`Cannot reach the service: ${e.message}`);
  }
});
