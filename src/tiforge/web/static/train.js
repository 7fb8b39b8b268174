// Train page: the config form generated from GET /api/schema, validated as you type by the
// config's own rules (POST /api/config/validate), YAML in and out, a data preview, and Start.
import { h, api, saveBlob, status, errorBox, pageTitle, modelLabel } from "./ui.js";

const STORE = "tiforge.form"; // the form's values survive a reload, as the console UI's do
const PENDING = "tiforge.pending-config"; // a config another page hands to the form (a run's "train again")

// Open the Train page filled with this (nested) config.
export function trainWith(config) {
  sessionStorage.setItem(PENDING, JSON.stringify(config));
  location.hash = "#/train";
}

export async function trainPage(view) {
  const [schema, models] = await Promise.all([api("/api/schema"), api("/api/models").catch(() => ({ models: [] }))]);
  const form = new ConfigForm(schema, models.models || []);
  view.append(form.render());
  form.validate();
  return () => form.close();
}

// The value a widget holds, as the config wants it; undefined = not set (the schema's default applies).
function readWidget(field, el) {
  if (field.kind === "boolean") return el.checked;
  const text = el.value;
  if (text.trim() === "") return undefined;
  if (field.kind === "integer" || field.kind === "number") return Number.isFinite(Number(text)) ? Number(text) : text.trim();
  if (field.kind === "choice") return field.choices[Number(text)];
  if (field.kind === "list") return text.split("\n").map((s) => s.trim()).filter(Boolean);
  if (field.kind === "yaml") { try { return JSON.parse(text); } catch { return text.trim(); } }
  return text;
}

function shown(field, value) {
  if (value === undefined || value === null) return "";
  if (field.kind === "list") return Array.isArray(value) ? value.join("\n") : String(value);
  if (field.kind === "yaml") return typeof value === "string" ? value : JSON.stringify(value);
  return String(value);
}

function defaultText(field) {
  const d = field.default;
  if (d === null || d === undefined) return field.required ? "required" : "not set";
  return `default: ${typeof d === "object" ? JSON.stringify(d) : d}`;
}

const idOf = (path) => `f-${path.replace(/\W/g, "_")}`;

// The config's messages start with the field they are about; the form shows them under it.
function message(e) {
  return e.field && e.message.startsWith(`${e.field}: `) ? e.message.slice(e.field.length + 2) : e.message;
}

function nest(flat) {
  const out = {};
  for (const [path, value] of Object.entries(flat)) {
    const parts = path.split(".");
    let node = out;
    for (const p of parts.slice(0, -1)) node = node[p] = node[p] && typeof node[p] === "object" ? node[p] : {};
    node[parts.at(-1)] = value;
  }
  return out;
}

function flatten(obj, prefix, known, out = {}) {
  for (const [k, v] of Object.entries(obj || {})) {
    const path = prefix ? `${prefix}.${k}` : k;
    if (v && typeof v === "object" && !Array.isArray(v) && !known.has(path)) flatten(v, path, known, out);
    else out[path] = v;
  }
  return out;
}

class ConfigForm {
  constructor(schema, models) {
    this.groups = schema.groups;
    this.fields = new Map(this.groups.flatMap((g) => g.fields.map((f) => [f.path, f])));
    this.models = models;
    this.values = this.load();
    this.widgets = new Map(); // path -> {row, input, error}
    this.timer = null;
    this.seq = 0;
    this.ok = false;
  }

  load() {
    const pending = sessionStorage.getItem(PENDING);
    if (pending) {
      sessionStorage.removeItem(PENDING);
      this.values = flatten(JSON.parse(pending), "", new Set(this.fields.keys()));
      localStorage.setItem(STORE, JSON.stringify(this.values));
      return this.values;
    }
    try { return JSON.parse(localStorage.getItem(STORE)) || {}; } catch { return {}; }
  }

  // A nested object's kind (`data_loader.dataset.type`) is its schema default unless chosen, as in
  // a YAML file that leaves it out; pydantic needs it to tell which fields belong.
  config() {
    const values = { ...this.values };
    for (const path of Object.keys(this.values)) {
      const parts = path.split(".");
      for (let n = 1; n < parts.length; n++) {
        const kind = this.fields.get(`${parts.slice(0, n).join(".")}.type`);
        if (kind && kind.default != null && !(kind.path in values)) values[kind.path] = kind.default;
      }
    }
    return nest(values);
  }

  set(path, value) {
    if (value === undefined) delete this.values[path];
    else this.values[path] = value;
    localStorage.setItem(STORE, JSON.stringify(this.values));
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.validate(), 300);
  }

  close() { clearTimeout(this.timer); }

  render() {
    this.status = h("div", { id: "form-status" });
    this.startButton = h("button", { class: "primary", id: "start", onclick: () => this.start() }, "Start training");
    this.preview = h("div", { id: "preview" });
    const yamlInput = h("input", { type: "file", accept: ".yaml,.yml", id: "load-yaml", style: "display:none",
      onchange: (e) => this.loadYaml(e.target.files[0]) });
    const actions = h("div", { class: "row" },
      h("button", { onclick: () => yamlInput.click() }, "Load YAML..."), yamlInput,
      h("button", { id: "load-demo", title: "the toy model and the demo's six pictures of a purple star", onclick: () => this.loadDemo() }, "Fill with the demo"),
      h("button", { id: "save-yaml", onclick: () => this.saveYaml() }, "Save YAML"),
      h("button", { id: "preview-data", onclick: () => this.previewData() }, "Preview data"),
      h("button", { onclick: () => { this.values = {}; localStorage.removeItem(STORE); this.rebuild(); } }, "Clear form"),
      this.startButton);
    this.body = h("div", { id: "form" }, this.groups.map((g) => this.group(g)));
    const bar = h("div", { class: "sticky" }, pageTitle("Train an embedding", actions), this.status);
    return h("div", {}, bar, this.preview, this.body);
  }

  rebuild() {
    this.widgets.clear();
    this.body.replaceChildren(...this.groups.map((g) => this.group(g)));
    this.validate();
  }

  group(g) {
    const rows = g.fields.map((f) => this.row(f));
    if (g.folded) return h("details", { class: "card", "data-group": g.title }, h("summary", {}, g.title, h("span", { class: "muted" }, ` (${g.fields.length})`)), rows);
    return h("section", { class: "card", "data-group": g.title }, h("h2", {}, g.title), rows);
  }

  row(field) {
    const id = idOf(field.path);
    const input = this.input(field, id);
    const error = h("div", { class: "error" });
    const extra = field.path === "model" && this.models.length ? this.modelPicker(input) : null;
    const row = h("div", { class: "field", "data-path": field.path },
      h("label", { for: id }, field.label || field.path, field.required ? " *" : "", h("span", { class: "path" }, field.path)),
      h("div", {}, input, extra),
      field.help ? h("div", { class: "help" }, field.help) : null, error);
    this.widgets.set(field.path, { row, input, error });
    return row;
  }

  input(field, id) {
    const value = this.values[field.path];
    const changed = (e) => this.set(field.path, readWidget(field, e.target));
    if (field.kind === "boolean") {
      return h("label", { class: "check" }, h("input", { type: "checkbox", id, name: field.path, checked: value ?? field.default ?? false, onchange: changed }),
        h("span", { class: "muted" }, ` ${defaultText(field)}`));
    }
    if (field.kind === "choice") {
      const select = h("select", { id, name: field.path, onchange: changed },
        h("option", { value: "" }, `(${defaultText(field)})`),
        field.choices.map((c, i) => h("option", { value: i, selected: value === c }, String(c))));
      return select;
    }
    const attrs = { id, name: field.path, placeholder: defaultText(field), oninput: changed };
    // A free-text field with suggestions (optimizer_type: any torch.optim class works too).
    const hints = field.choices && field.choices.length ? h("datalist", { id: `${id}-hints` }, field.choices.map((c) => h("option", { value: c }))) : null;
    if (field.kind === "list" || field.kind === "yaml") {
      return h("textarea", { ...attrs, rows: 2, placeholder: field.kind === "list" ? `one per line; ${defaultText(field)}` : `JSON or a plain value; ${defaultText(field)}` }, shown(field, value));
    }
    const input = h("input", { ...attrs, type: "text", value: shown(field, value), list: hints ? hints.id : null,
      inputmode: field.kind === "string" || field.kind === "path" ? null : "decimal" });
    return hints ? h("span", {}, input, hints) : input;
  }

  modelPicker(input) {
    const pick = (e) => {
      const m = this.models[Number(e.target.value)];
      if (!m) return;
      input.value = m.path;
      this.set("model", m.path);
      // The family picks the config type, as `tiforge train` would insist.
      const type = this.fields.get("type");
      const want = m.family === "sdxl" ? "SDXL_TEXTUAL_INVERSION" : "SD_TEXTUAL_INVERSION";
      if (type && type.choices && type.choices.includes(want)) { this.set("type", want); this.refresh("type"); }
    };
    return h("select", { id: "model-picker", style: "margin-top:4px", onchange: pick },
      h("option", { value: "" }, `pick one of ${this.models.length} model(s) found...`),
      this.models.map((m, i) => h("option", { value: i }, `${modelLabel(m)} - ${m.path}`)));
  }

  refresh(path) {
    const w = this.widgets.get(path);
    const field = this.fields.get(path);
    if (!w || !field) return;
    const fresh = this.input(field, idOf(path));
    w.input.replaceWith(fresh);
    w.input = fresh;
  }

  async validate() {
    const seq = ++this.seq;
    let answer;
    try {
      answer = await api("/api/config/validate", { config: this.config() });
    } catch (err) {
      this.status.replaceChildren(errorBox(err));
      return;
    }
    if (seq !== this.seq) return; // an older answer arriving after a newer question
    this.showErrors(answer.errors || []);
    this.ok = answer.ok;
    this.startButton.disabled = !answer.ok;
    this.status.replaceChildren(answer.ok
      ? status("ok", `Valid config${answer.family ? ` for an ${answer.family.toUpperCase()} model` : ""}: ready to start.`)
      : this.errorSummary(answer.errors || []));
  }

  // An error goes under its field, or the nearest field it is about (a parent path or a child's).
  fieldFor(path) {
    if (!path) return null;
    if (this.widgets.has(path)) return path;
    const parts = path.split(".");
    for (let n = parts.length - 1; n > 0; n--) {
      const prefix = parts.slice(0, n).join(".");
      if (this.widgets.has(prefix)) return prefix;
    }
    return [...this.widgets.keys()].find((p) => p.startsWith(`${path}.`)) || null;
  }

  // A field the user has not touched yet is "needed" (amber), not "invalid" (red), until Start.
  showErrors(errors, insist = false) {
    for (const w of this.widgets.values()) { w.row.classList.remove("invalid", "needed"); w.error.replaceChildren(); }
    for (const e of errors) {
      const path = this.fieldFor(e.field);
      if (!path) continue;
      const w = this.widgets.get(path);
      const touched = insist || Object.keys(this.values).some((p) => p === path || p.startsWith(`${path}.`) || path.startsWith(`${p}.`));
      w.row.classList.add(touched ? "invalid" : "needed");
      w.error.append(h("div", {}, message(e)));
      const folded = w.row.closest("details");
      if (folded && this.values[path] !== undefined) folded.open = true; // the user's own value is at fault: show it
    }
  }

  errorSummary(errors) {
    const red = this.body.querySelector(".field.invalid") || errors.some((e) => !this.fieldFor(e.field));
    return h("div", { class: `status ${red ? "bad" : "warn"}` },
      red ? `${errors.length} problem(s) to fix before training:` : "To start, fill in:",
      h("ul", { class: "errors" }, errors.map((e) => h("li", {},
        e.field ? h("a", { href: "#", onclick: (ev) => { ev.preventDefault(); this.reveal(e.field); } }, e.field) : null,
        e.field ? ": " : "", message(e), this.dropButton(e.field)))));
  }

  // A field the form has no widget for (an unknown or misspelt key from a loaded YAML) can only be
  // dropped here; otherwise it would block Start until "Clear form".
  dropButton(path) {
    if (!path || this.fieldFor(path)) return null;
    const held = Object.keys(this.values).filter((p) => p === path || p.startsWith(`${path}.`));
    if (!held.length) return null;
    return h("button", { class: "small", "data-drop": path, onclick: () => {
      for (const p of held) delete this.values[p];
      localStorage.setItem(STORE, JSON.stringify(this.values));
      this.validate();
    } }, `remove ${path}`);
  }

  reveal(path) {
    const w = this.widgets.get(this.fieldFor(path));
    if (!w) return;
    const folded = w.row.closest("details");
    if (folded) folded.open = true;
    w.row.scrollIntoView({ block: "center" });
    w.row.querySelector("input, select, textarea")?.focus();
  }

  async loadYaml(file) {
    if (!file) return;
    await this.fillFrom(async () => {
      const answer = await api("/api/config/from-yaml", { yaml: await file.text() });
      // Not a config at all (bad YAML, a list, another file): say so and keep the form as it is.
      if (!Object.keys(answer.config || {}).length) {
        const why = (answer.errors || [])[0];
        throw new Error(`${file.name}: ${why ? why.message : "no config fields in it"}; the form is unchanged`);
      }
      return answer.config;
    });
  }

  // The demo's own settings (toy model, its six pictures): Start then runs `tiforge demo`'s training.
  async loadDemo() {
    await this.fillFrom(async () => (await api("/api/config/demo")).config);
  }

  async fillFrom(getConfig) {
    try {
      this.values = flatten(await getConfig(), "", new Set(this.fields.keys()));
      localStorage.setItem(STORE, JSON.stringify(this.values));
      this.rebuild();
    } catch (err) {
      this.status.replaceChildren(errorBox(err));
    }
  }

  async saveYaml() {
    try {
      const answer = await api("/api/config/to-yaml", { config: this.config() });
      saveBlob(new Blob([answer.yaml], { type: "application/x-yaml" }), "tiforge-config.yaml");
    } catch (err) {
      this.status.replaceChildren(errorBox(err));
    }
  }

  async previewData() {
    this.preview.replaceChildren(h("p", { class: "muted" }, "Reading the training data..."));
    try {
      this.preview.replaceChildren(previewCard(await api("/api/data/preview", { config: this.config() })));
    } catch (err) {
      this.preview.replaceChildren(errorBox(err));
    }
  }

  async start() {
    this.startButton.disabled = true;
    try {
      const job = await api("/api/jobs", { config: this.config() });
      location.hash = `#/job/${encodeURIComponent(job.id)}`;
    } catch (err) {
      if (err.body && err.body.errors) this.showErrors(err.body.errors, true);
      this.status.replaceChildren(errorBox(err));
      this.startButton.disabled = false;
    }
  }
}

function previewCard(p) {
  const items = p.items || [];
  return h("section", { class: "card" },
    h("div", { class: "row" }, h("h2", { class: "grow" }, `Training data: ${p.count ?? items.length} picture(s)`),
      h("button", { onclick: (e) => e.target.closest("section").remove() }, "Close")),
    (p.warnings || []).map((w) => status("warn", w)),
    (p.bad_files || []).length ? h("div", { class: "status bad" }, "Bad files (skipped or fatal, per on_bad_image):",
      h("ul", {}, p.bad_files.map((b) => h("li", {}, h("code", {}, b.file), `: ${b.reason}`)))) : null,
    h("div", { class: "thumbs" }, items.map((it) => h("div", { class: "thumb" },
      it.image ? h("img", { src: it.image, alt: it.file, loading: "lazy" }) : null,
      h("div", { class: "muted" }, it.file),
      h("div", {}, it.caption),
      h("div", {}, (it.tokens || []).map((t) => h("span", { class: t.placeholder ? "tok ph" : "tok", title: t.placeholder ? "the placeholder's vector" : "" },
        t.text, h("i", {}, t.id))))))),
    items.length < (p.count || 0) ? h("p", { class: "muted" }, `(first ${items.length} shown)`) : null);
}
