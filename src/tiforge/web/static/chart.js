// Loss and learning-rate curves on a <canvas>: lines on the left axis (loss), an optional dashed
// line on the right axis (lr). Small enough to own instead of vendoring a plotting library.

const PAD = { left: 58, right: 62, top: 12, bottom: 28 };

function ticks(lo, hi, n = 4) {
  return Array.from({ length: n + 1 }, (_, i) => lo + ((hi - lo) * i) / n);
}

function label(v) {
  if (v === 0) return "0";
  const a = Math.abs(v);
  return a < 1e-2 || a >= 1e4 ? v.toExponential(1) : String(+v.toPrecision(3));
}

function range(values) {
  let lo = Math.min(...values), hi = Math.max(...values);
  if (!Number.isFinite(lo)) return [0, 1];
  if (hi === lo) { const d = Math.abs(hi) * 0.1 || 1; lo -= d; hi += d; }
  return [lo, hi];
}

// series: [{name, color, points: [[step, value], ...], axis: "left"|"right", dashed}]
export function drawChart(canvas, series, { leftLabel = "loss", rightLabel = "lr", empty = "no steps yet" } = {}) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 600, hgt = canvas.clientHeight || 260;
  canvas.width = w * ratio;
  canvas.height = hgt * ratio;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, hgt);
  ctx.font = "11px system-ui, sans-serif";
  const drawn = series.filter((s) => s.points.length);
  if (!drawn.length) {
    ctx.fillStyle = "#6b7280";
    ctx.textAlign = "center";
    ctx.fillText(empty, w / 2, hgt / 2);
    return;
  }
  const xs = range(drawn.flatMap((s) => s.points.map((p) => p[0])));
  const axes = {};
  for (const side of ["left", "right"]) {
    const vals = drawn.filter((s) => (s.axis || "left") === side).flatMap((s) => s.points.map((p) => p[1]).filter(Number.isFinite));
    if (vals.length) axes[side] = range(vals);
  }
  const X = (x) => PAD.left + ((x - xs[0]) / (xs[1] - xs[0])) * (w - PAD.left - PAD.right);
  const Y = (y, side) => { const [lo, hi] = axes[side]; return hgt - PAD.bottom - ((y - lo) / (hi - lo)) * (hgt - PAD.top - PAD.bottom); };

  ctx.strokeStyle = "#eef0f3";
  ctx.fillStyle = "#6b7280";
  for (const [side, [lo, hi]] of Object.entries(axes)) {
    for (const t of ticks(lo, hi)) {
      const y = Y(t, side);
      if (side === "left") { ctx.beginPath(); ctx.moveTo(PAD.left, y); ctx.lineTo(w - PAD.right, y); ctx.stroke(); }
      ctx.textAlign = side === "left" ? "right" : "left";
      ctx.fillText(label(t), side === "left" ? PAD.left - 6 : w - PAD.right + 6, y + 4);
    }
  }
  ctx.textAlign = "center";
  const every = Math.max(1, Math.ceil((xs[1] - xs[0]) / 6));
  for (let t = Math.ceil(xs[0] / every) * every; t <= xs[1]; t += every) ctx.fillText(String(t), X(t), hgt - PAD.bottom + 16);
  ctx.fillText("step", w / 2, hgt - 2);
  ctx.save();
  ctx.rotate(-Math.PI / 2);
  if (axes.left) ctx.fillText(leftLabel, -hgt / 2, 12);
  if (axes.right) ctx.fillText(rightLabel, -hgt / 2, w - 6);
  ctx.restore();

  for (const s of drawn) {
    const side = s.axis || "left";
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 1.6;
    ctx.setLineDash(s.dashed ? [5, 4] : []);
    ctx.beginPath();
    s.points.filter((p) => Number.isFinite(p[1])).forEach(([x, y], i) => (i ? ctx.lineTo(X(x), Y(y, side)) : ctx.moveTo(X(x), Y(y, side))));
    if (s.points.length === 1) { const [x, y] = s.points[0]; ctx.arc(X(x), Y(y, side), 2, 0, 2 * Math.PI); }
    ctx.stroke();
  }
  ctx.setLineDash([]);
}

export function legend(series) {
  const box = document.createElement("div");
  box.className = "legend";
  for (const s of series) {
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = s.color;
    item.append(swatch, s.name);
    box.append(item);
  }
  return box;
}

// [[step, loss, lr], ...] -> the two series of one run
export function runSeries(history, name = "", colors = ["#3b5bdb", "#e8590c"]) {
  const prefix = name ? `${name} ` : "";
  return [
    { name: `${prefix}loss`, color: colors[0], points: history.map((r) => [r[0], r[1]]) },
    { name: `${prefix}lr`, color: colors[1], axis: "right", dashed: true, points: history.map((r) => [r[0], r[2]]) },
  ];
}
