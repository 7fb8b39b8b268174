// Job page: one training, live. The page asks GET /api/jobs/{id} for everything so far, then
// follows the server-sent events, so a reload or a second tab shows the same thing.
import { h, append, api, status, errorBox, fmt, duration, onEvent, pageTitle } from "./ui.js";
import { drawChart, legend, runSeries } from "./chart.js";

const LIVE = new Set(["queued", "running", "stopping"]);

export async function jobPage(view, id) {
  const { jobs } = await api("/api/jobs");
  if (!id) {
    if (!jobs.length) {
      append(view, pageTitle("Job"), h("p", { class: "muted" }, "No training yet. Start one from the ", h("a", { href: "#/train" }, "Train"), " page."));
      return null;
    }
    const newest = jobs.find((j) => LIVE.has(j.state)) || jobs.at(-1);
    id = newest.id;
  }
  if (!jobs.some((j) => j.id === id)) {
    append(view, pageTitle(`Job ${id}`), status("bad", `No job ${id} on this server (jobs are kept while it runs).`),
      h("p", {}, "Its run folder, if it got one, is on the ", h("a", { href: "#/runs" }, "Runs"), " page."));
    return null;
  }
  const page = new JobView(view, id, jobs);
  await page.refresh();
  return () => page.close();
}

class JobView {
  constructor(view, id, jobs) {
    this.id = id;
    this.job = null;
    this.el = {
      title: h("h1", { class: "grow" }, `Job ${id}`),
      state: h("span", { class: "badge", id: "job-state" }),
      stop: h("button", { id: "stop", onclick: () => this.act("stop") }, "Stop (save and stop)"),
      resume: h("button", { id: "resume", class: "primary", onclick: () => this.act("resume") }, "Resume"),
      message: h("div"),
      stats: h("div", { class: "stats", id: "job-stats" }),
      canvas: h("canvas", { class: "chart", id: "loss-chart" }),
      legend: h("div"),
      grid: h("div", { id: "job-grid" }, h("p", { class: "muted" }, "No validation pictures yet.")),
      log: h("pre", { id: "job-log" }),
      runDir: h("div", { class: "muted" }),
    };
    this.el.others = h("div");
    this.showOthers(jobs);
    append(view,
      h("div", { class: "row" }, this.el.title, this.el.state, this.el.stop, this.el.resume),
      this.el.runDir, this.el.message,
      h("section", { class: "card" }, this.el.stats),
      h("section", { class: "card" }, h("h2", {}, "Loss and learning rate"), this.el.canvas, this.el.legend),
      h("div", { class: "side" },
        h("section", { class: "card" }, h("h2", {}, "Newest validation grid"), this.el.grid),
        h("section", { class: "card" }, h("h2", {}, "Log"), this.el.log)),
      this.el.others);
    this.unsubscribe = onEvent((e) => this.hear(e));
    this.onResize = () => this.plot();
    window.addEventListener("resize", this.onResize);
    this.refreshTimer = null;
  }

  // The other jobs' table follows their state changes (a queued job starting, finishing).
  showOthers(jobs) {
    const others = jobs.filter((j) => j.id !== this.id);
    this.el.others.replaceChildren(...(others.length
      ? [h("section", { class: "card" }, h("h2", {}, "Other jobs"), jobTable(others))] : []));
  }

  async refreshOthers() {
    try { this.showOthers((await api("/api/jobs")).jobs); } catch { /* the next event tries again */ }
  }

  close() {
    this.unsubscribe();
    window.removeEventListener("resize", this.onResize);
    clearTimeout(this.refreshTimer);
  }

  async refresh() {
    try {
      this.job = await api(`/api/jobs/${encodeURIComponent(this.id)}`);
      if (this.job.resumed_from && !this.before) this.before = await this.earlier(this.job.resumed_from);
    } catch (err) {
      this.el.message.replaceChildren(errorBox(err));
      return;
    }
    this.render();
  }

  // A resumed job's curve continues the stopped one's: fetch the steps before it, once.
  async earlier(id) {
    try {
      const prior = await api(`/api/jobs/${encodeURIComponent(id)}`);
      this.priorGrid = this.priorGrid || prior.grid; // the same run folder's grid until this job validates
      const before = prior.resumed_from ? await this.earlier(prior.resumed_from) : [];
      return before.filter((r) => r[0] < ((prior.history || [])[0] || [Infinity])[0]).concat(prior.history || []);
    } catch {
      return [];
    }
  }

  // Steps update the page at once; anything else (files written, state changes) asks the server.
  hear(e) {
    if (e.event === "reconnected") { this.soon(0); this.refreshOthers(); return; }
    if (e.job !== this.id) {
      if (e.job && e.event !== "step" && e.event !== "log") this.refreshOthers();
      return;
    }
    if (!this.job) return;
    if (e.event === "log") {
      this.job.log_tail = (this.job.log_tail || []).concat([e.line]).slice(-50);
      this.el.log.textContent = this.job.log_tail.join("\n");
      this.el.log.scrollTop = this.el.log.scrollHeight;
    } else if (e.event === "step") {
      const j = this.job;
      j.history = (j.history || []).filter((r) => r[0] < e.step).concat([[e.step, e.loss, e.lr]]);
      Object.assign(j, { step: e.step, max_steps: e.max_steps, loss: e.loss, lr: e.lr, state: j.state === "queued" ? "running" : j.state });
      if (e.seconds > 0) j.steps_per_s = j.steps_per_s ? 0.8 * j.steps_per_s + 0.2 / e.seconds : 1 / e.seconds;
      if (j.steps_per_s) j.eta_s = (j.max_steps - j.step) / j.steps_per_s;
      this.render();
      this.soon(4000); // the log tail moves too; fetch it now and then, not every step
    } else {
      this.soon(0);
    }
  }

  soon(ms) {
    if (this.refreshTimer && ms > 0) return;
    clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => { this.refreshTimer = null; this.refresh(); }, ms);
  }

  async act(what) {
    this.el[what].disabled = true;
    try {
      const job = await api(`/api/jobs/${encodeURIComponent(this.id)}/${what}`, {});
      if (what === "resume") location.hash = `#/job/${encodeURIComponent(job.id)}`;
      else { this.job = { ...this.job, ...job }; this.render(); }
    } catch (err) {
      this.el.message.replaceChildren(errorBox(err));
      this.el[what].disabled = false;
    }
  }

  render() {
    const j = this.job;
    this.el.state.textContent = j.state;
    this.el.state.className = `badge ${j.state}`;
    this.el.stop.disabled = !(j.state === "running" || j.state === "queued");
    this.el.resume.hidden = !j.resumable;
    this.el.resume.disabled = !j.resumable;
    this.el.runDir.textContent = j.run_dir ? `run folder: ${j.run_dir}` : "";
    this.el.message.replaceChildren(h("div", {},
      j.state === "failed" ? status("bad", j.error || "The training failed; see the log.") : null,
      j.state === "finished" && j.embedding ? status("ok", `Finished. Embedding: ${j.embedding}`) : null,
      j.state === "stopped" ? status("warn", j.run_dir
        ? `Stopped at step ${j.step}: checkpoint and embedding saved.${j.resumable ? " Resume continues from there." : ""}`
        : "Stopped before its first step: nothing was saved.") : null,
      j.state === "stopped" && j.error ? h("details", { class: "muted" }, h("summary", {}, "what the run said"), h("pre", {}, j.error)) : null,
      j.embedding_url && !LIVE.has(j.state) ? h("p", {}, h("a", { id: "job-embedding", href: j.embedding_url, download: "" }, "Download the embedding"),
        j.run_dir ? [" - every layout, the grids and the report are on the ", h("a", { href: "#/runs" }, "Runs"), " page"] : null) : null));
    const pct = j.max_steps ? Math.round((100 * (j.step || 0)) / j.max_steps) : 0;
    this.el.stats.replaceChildren(
      stat(`${j.step ?? 0} / ${j.max_steps ?? "?"}`, `step (${pct}%)`, "stat-step"),
      stat(fmt(j.loss), "loss", "stat-loss"),
      stat(fmt(j.lr), "learning rate"),
      stat(j.steps_per_s ? `${fmt(j.steps_per_s, 2)}/s` : "-", "speed"),
      stat(LIVE.has(j.state) ? duration(j.eta_s) : "-", "time left"));
    const grid = j.grid || this.priorGrid;
    if (grid && this.el.grid.dataset.src !== grid) {
      this.el.grid.dataset.src = grid;
      this.el.grid.replaceChildren(h("a", { href: grid, target: "_blank" }, h("img", { class: "grid", src: grid, alt: "validation grid" })),
        h("div", { class: "muted" }, decodeURIComponent(grid.split("/").slice(-2).join("/"))));
    }
    this.el.log.textContent = (j.log_tail || []).join("\n");
    this.el.log.scrollTop = this.el.log.scrollHeight;
    this.plot();
  }

  plot() {
    const own = this.job.history || [];
    const first = own.length ? own[0][0] : Infinity;
    const series = runSeries((this.before || []).filter((r) => r[0] < first).concat(own));
    drawChart(this.el.canvas, series);
    this.el.legend.replaceChildren(legend(series));
  }
}

function stat(value, label, id) {
  return h("div", { class: "stat", id }, h("b", {}, value), h("span", {}, label));
}

export function jobTable(jobs) {
  return h("table", {}, h("tr", {}, h("th", {}, "job"), h("th", {}, "state"), h("th", {}, "step"), h("th", {}, "loss"), h("th", {}, "run folder")),
    jobs.map((j) => h("tr", {},
      h("td", {}, h("a", { href: `#/job/${encodeURIComponent(j.id)}` }, j.id)),
      h("td", {}, h("span", { class: `badge ${j.state}` }, j.state)),
      h("td", {}, `${j.step ?? 0} / ${j.max_steps ?? "?"}`), h("td", {}, fmt(j.loss)), h("td", { class: "muted" }, j.run_dir || ""))));
}
