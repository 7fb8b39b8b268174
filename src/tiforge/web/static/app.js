// tiforge web UI: a hash-routed single page over the JSON API (see README "Web UI").
// No build step and nothing loaded from elsewhere, so it works offline as shipped.
import { trainPage } from "./train.js";
import { jobPage } from "./job.js";
import { runsPage, runPage, comparePage } from "./runs.js";
import { embeddingPage } from "./embedding.js";
import { h, startEvents } from "./ui.js";

const ROUTES = { train: trainPage, job: jobPage, runs: runsPage, run: runPage, compare: comparePage, embedding: embeddingPage };

let leaving = null; // the current page's clean-up (listeners, timers), run when the route changes

async function route() {
  if (leaving) leaving();
  leaving = null;
  const [name, ...args] = (location.hash.replace(/^#\/?/, "") || "train").split("/");
  const page = ROUTES[name] || trainPage;
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.page === name || (name === "run" || name === "compare") && a.dataset.page === "runs");
  }
  const view = document.getElementById("view");
  view.replaceChildren();
  try {
    leaving = (await page(view, ...args.map(decodeURIComponent))) || null;
  } catch (err) {
    view.append(h("div", { class: "status bad" }, `Could not show this page: ${err.message}`));
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => { startEvents(); route(); });
