// Embedding page: upload a file or pick a run's, read `inspect`'s answer, convert it to another
// tool's layout, and generate pictures with it on a chosen model.
import { h, append, api, download, fmt, status, errorBox, pageTitle, modelLabel } from "./ui.js";

export async function embeddingPage(view, preset) {
  const [{ runs }, { models }] = await Promise.all([api("/api/runs"), api("/api/models").catch(() => ({ models: [] }))]);
  const files = runs.flatMap((r) => (r.embeddings || []).map((e) => ({ ...e, run: r.name || r.id })));
  const page = { source: null }; // {upload_id} or {path}: what convert and generate act on
  const result = h("div", { id: "inspect-result" });
  const actions = h("div", { id: "embedding-actions" });
  const upload = h("input", { type: "file", id: "embedding-file", accept: ".safetensors,.pt,.bin,.ckpt" });
  const pick = h("select", { id: "embedding-pick" }, h("option", { value: "" }, files.length ? "a run's embedding..." : "(no run embeddings yet)"),
    files.map((f) => h("option", { value: f.url, selected: f.url === preset }, `${f.run}: ${f.path}`)));
  const model = h("select", { id: "embedding-model" }, h("option", { value: "" }, "(no model: skip nearest tokens)"),
    models.map((m) => h("option", { value: m.path }, modelLabel(m))));
  if (models.length) model.selectedIndex = 1;

  async function inspect(body) {
    result.replaceChildren(h("p", { class: "muted" }, "Reading the file..."));
    actions.replaceChildren();
    try {
      const answer = await api("/api/embeddings/inspect", body);
      page.source = answer.upload_id ? { upload_id: answer.upload_id } : { path: body.path };
      result.replaceChildren(inspection(answer));
      actions.replaceChildren(convertCard(page.source), generateCard(page.source, models, model.value));
    } catch (err) {
      result.replaceChildren(errorBox(err));
    }
  }
  upload.addEventListener("change", () => {
    const file = upload.files[0];
    if (!file) return;
    const form = new FormData();
    form.append("file", file);
    if (model.value) form.append("model", model.value);
    inspect(form);
  });
  pick.addEventListener("change", () => pick.value && inspect({ path: pick.value, ...(model.value ? { model: model.value } : {}) }));

  append(view, pageTitle("Embedding"),
    h("section", { class: "card" },
      h("div", { class: "field" }, h("label", { for: "embedding-file" }, "Upload a file"), upload,
        h("div", { class: "help" }, ".safetensors, or a .pt/.bin read without running any code in it")),
      h("div", { class: "field" }, h("label", { for: "embedding-pick" }, "... or pick one"), pick),
      h("div", { class: "field" }, h("label", { for: "embedding-model" }, "Model"), model,
        h("div", { class: "help" }, "for the nearest vocabulary tokens and for generating pictures"))),
    result, actions);
  if (preset && pick.value) inspect({ path: pick.value, ...(model.value ? { model: model.value } : {}) });
  return null;
}

function inspection(a) {
  const nearest = a.nearest || [];
  return h("section", { class: "card" }, h("h2", {}, "What the file holds"),
    h("dl", { class: "kv" },
      h("dt", {}, "layout"), h("dd", { id: "inspect-layout" }, a.layout ?? "-"),
      h("dt", {}, "family"), h("dd", {}, a.family ?? "-"),
      h("dt", {}, "trigger"), h("dd", {}, a.trigger ?? "-"),
      a.step != null ? [h("dt", {}, "trained steps"), h("dd", {}, a.step)] : null,
      h("dt", {}, "vectors"), h("dd", {}, `${a.vectors ?? "-"} x ${perEncoder(a.dim, (d) => d)}`),
      h("dt", {}, "norms"), h("dd", {}, perEncoder(a.norms, (ns) => (ns || []).map((n) => fmt(n, 3)).join(", ") || "-")),
      h("dt", {}, "nearest tokens"), h("dd", { id: "inspect-nearest" }, nearest.length ? nearest.map(nearestLine) : "-")),
    h("h2", {}, "Loads in"),
    h("table", {}, h("tr", {}, h("th", {}, "tool"), h("th", {}, ""), h("th", {}, "why")),
      (a.loads_in || []).map((t) => h("tr", {}, h("td", {}, t.tool), h("td", {}, t.ok ? "yes" : "no"), h("td", { class: "muted" }, t.reason || "")))));
}

// SDXL files answer per text encoder ({"clip_l": ..., "clip_g": ...}), SD files with one value.
function perEncoder(value, show) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    return Object.entries(value).map(([enc, v]) => `${enc}: ${show(v)}`).join("; ");
  }
  return value == null ? "-" : String(show(value));
}

// {"vector": 0, "encoder": "clip_l"|null, "tokens": [[text, similarity], ...]} -> one line per vector
function nearestLine(n) {
  if (!n || typeof n !== "object") return h("div", {}, String(n));
  const head = `vector ${n.vector}${n.encoder ? ` (${n.encoder})` : ""}: `;
  return h("div", {}, h("span", { class: "muted" }, head),
    (n.tokens || []).map(([text, sim]) => h("span", { class: "tok", title: "cosine similarity" }, text, h("i", {}, fmt(sim, 2)))));
}

function convertCard(source) {
  const msg = h("div");
  const to = (layout) => async () => {
    msg.replaceChildren();
    try { await download("/api/embeddings/convert", { ...source, to: layout }, `embedding-${layout}.safetensors`); }
    catch (err) { msg.replaceChildren(errorBox(err)); }
  };
  return h("section", { class: "card" }, h("h2", {}, "Convert"),
    h("div", { class: "row" }, ["diffusers", "a1111", "kohya"].map((l) => h("button", { onclick: to(l), "data-layout": l }, `Download as ${l}`))), msg);
}

function generateCard(source, models, chosen) {
  const model = h("select", { id: "gen-model" }, models.map((m) => h("option", { value: m.path, selected: m.path === chosen }, modelLabel(m))));
  const prompt = h("input", { type: "text", id: "gen-prompt", placeholder: "a prompt using the embedding's token, e.g. a photo of <my-concept>" });
  const steps = h("input", { type: "text", id: "gen-steps", value: "20", inputmode: "numeric" });
  const seed = h("input", { type: "text", id: "gen-seed", value: "0", inputmode: "numeric" });
  const count = h("input", { type: "text", id: "gen-count", value: "4", inputmode: "numeric" });
  const out = h("div", { id: "gen-images" });
  const go = h("button", { class: "primary", id: "generate" }, "Generate");
  go.addEventListener("click", async () => {
    go.disabled = true;
    out.replaceChildren(h("p", { class: "muted" }, "Generating..."));
    try {
      const answer = await api("/api/embeddings/generate", { ...source, model: model.value, prompt: prompt.value,
        steps: Number(steps.value), seed: Number(seed.value), count: Number(count.value) });
      out.replaceChildren(h("div", { class: "images" }, answer.images.map((u) => h("img", { src: u, alt: "generated" }))));
    } catch (err) {
      out.replaceChildren(errorBox(err));
    }
    go.disabled = false;
  });
  const row = (label, input) => h("div", { class: "field" }, h("label", {}, label), input);
  return h("section", { class: "card" }, h("h2", {}, "Generate pictures"),
    models.length ? [row("Model", model), row("Prompt", prompt), row("Steps", steps), row("Seed", seed), row("Pictures", count), go, out]
      : status("warn", "No model found to generate with."));
}
