// Runs: every run folder under the server's root, one run's details, and two runs side by side.
import { h, append, api, fmt, pageTitle, errorBox } from "./ui.js";
import { drawChart, legend, runSeries } from "./chart.js";
import { trainWith } from "./train.js";

const LAYOUTS = ["diffusers", "a1111", "kohya"];
const NO_HISTORY = "no loss history (the run folder has no metrics.jsonl)";
const runUrl = (id) => `/api/runs/${id.split("/").map(encodeURIComponent).join("/")}`;
const hashId = (id) => encodeURIComponent(id);

export async function runsPage(view) {
  const { runs } = await api("/api/runs");
  const picked = new Set();
  const compare = h("button", { id: "compare", disabled: true, onclick: () => {
    const [a, b] = [...picked];
    location.hash = `#/compare/${hashId(a)}/${hashId(b)}`;
  } }, "Compare the two ticked");
  const tick = (id) => (e) => {
    if (e.target.checked) picked.add(id); else picked.delete(id);
    compare.disabled = picked.size !== 2;
  };
  append(view, pageTitle("Runs", compare));
  if (!runs.length) {
    view.append(h("p", { class: "muted" }, "No run folders under the server's root yet."));
    return null;
  }
  view.append(h("table", { id: "runs-table" },
    h("tr", {}, ["", "run", "steps", "final loss", "family", "started", "report", "embedding"].map((t) => h("th", {}, t))),
    runs.map((r) => h("tr", { "data-run": r.id },
      h("td", {}, h("input", { type: "checkbox", onchange: tick(r.id), title: "compare" })),
      h("td", {}, h("a", { href: `#/run/${hashId(r.id)}` }, r.name || r.id),
        r.name && r.name !== r.id ? h("div", { class: "muted" }, r.id) : null),
      h("td", {}, r.steps ?? "-"), h("td", {}, fmt(r.loss)), h("td", {}, r.family || "-"), h("td", {}, r.started || "-"),
      h("td", {}, r.report ? h("a", { href: r.report, target: "_blank" }, "report.html") : "-"),
      h("td", {}, (r.embeddings || []).length ? downloads(r) : "-")))));
  return null;
}

function downloads(run) {
  return h("span", {}, LAYOUTS.map((l) => [h("a", { class: "dl", href: `${runUrl(run.id)}/embedding?layout=${l}`, download: "" }, l), " "]));
}

export async function runPage(view, id) {
  const run = await api(runUrl(id));
  const canvas = h("canvas", { class: "chart", id: "run-chart" });
  const message = h("div");
  const series = runSeries(run.history || []);
  append(view,
    pageTitle(run.name || run.id, run.report ? h("a", { class: "button", href: run.report, target: "_blank" }, "Open report.html") : null,
      run.config_yaml ? h("button", { id: "train-again", onclick: () => trainAgain(run.config_yaml, message) }, "Train again with these settings") : null),
    message,
    run.name && run.name !== run.id ? h("div", { class: "muted" }, run.id) : null,
    h("section", { class: "card" }, h("dl", { class: "kv" },
      h("dt", {}, "steps"), h("dd", {}, run.steps ?? "-"), h("dt", {}, "final loss"), h("dd", {}, fmt(run.loss)),
      h("dt", {}, "family"), h("dd", {}, run.family || "-"), h("dt", {}, "started"), h("dd", {}, run.started || "-"),
      h("dt", {}, "embedding"), h("dd", {}, (run.embeddings || []).length
        ? [h("span", { class: "muted" }, run.embeddings[0].path, " - download as: "), downloads(run),
           h("a", { href: `#/embedding/${encodeURIComponent(run.embeddings[0].url)}` }, " inspect...")]
        : "none yet"))),
    h("section", { class: "card" }, h("h2", {}, "Loss and learning rate"), canvas, legend(series)),
    h("section", { class: "card" }, h("h2", {}, "Validation grids"), grids(run.grids)),
    h("section", { class: "card" }, h("details", {}, h("summary", {}, "config.yaml"), h("pre", {}, run.config_yaml || "(none)"))));
  const draw = () => drawChart(canvas, series, { empty: NO_HISTORY });
  draw();
  const onResize = draw;
  window.addEventListener("resize", onResize);
  return () => window.removeEventListener("resize", onResize);
}

// The run's config.yaml as the form's values (a resumed run's resume_from_checkpoint is dropped:
// "again" is a new run; Resume is on the Job page).
async function trainAgain(configYaml, message) {
  try {
    const { config } = await api("/api/config/from-yaml", { yaml: configYaml });
    delete config.resume_from_checkpoint;
    trainWith(config);
  } catch (err) {
    message.replaceChildren(errorBox(err));
  }
}

function grids(urls) {
  if (!urls || !urls.length) return h("p", { class: "muted" }, "No validation grids.");
  return h("div", {}, urls.map((u) => h("figure", { style: "margin:0 0 10px" },
    h("img", { class: "grid", src: u, alt: "validation grid" }), h("figcaption", { class: "muted" }, u.split("/").slice(-2).join("/")))));
}

const COLORS = [["#3b5bdb", "#91a7ff"], ["#e8590c", "#ffa94d"]];

export async function comparePage(view, a, b) {
  const runs = await Promise.all([a, b].map((id) => api(runUrl(id))));
  const series = runs.flatMap((r, i) => runSeries(r.history || [], r.name || r.id, COLORS[i]));
  const canvas = h("canvas", { class: "chart", id: "compare-chart" });
  append(view, pageTitle("Compare two runs"),
    h("section", { class: "card" }, h("h2", {}, "Loss and learning rate"), canvas, legend(series)),
    h("div", { class: "side" }, runs.map((r) => h("section", { class: "card" },
      h("h2", {}, h("a", { href: `#/run/${hashId(r.id)}` }, r.name || r.id)),
      h("div", { class: "muted" }, `${r.steps ?? "?"} steps`, r.loss == null ? "" : `, final loss ${fmt(r.loss)}`,
        (r.history || []).length ? "" : " (no loss history: no metrics.jsonl)"),
      grids(r.grids)))));
  const draw = () => drawChart(canvas, series, { empty: NO_HISTORY });
  draw();
  const onResize = draw;
  window.addEventListener("resize", onResize);
  return () => window.removeEventListener("resize", onResize);
}
