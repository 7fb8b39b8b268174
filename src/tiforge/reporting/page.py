"""report.html itself: one page, no scripts, no outside files. Every value goes through jinja2's
autoescaping, so a caption or token such as `<script>` shows as text and never runs."""

from __future__ import annotations

from urllib.parse import quote

import jinja2

TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tiforge report: {{ title }}</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 0 16px 40px; color: #222; }
h1 { font-size: 22px; margin: 18px 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: 3px 6px; vertical-align: top; text-align: left; }
th { background: #f4f4f4; } .muted { color: #777; } code, pre { font: 12px/1.4 ui-monospace, monospace; }
pre { background: #f7f7f7; padding: 10px; overflow: auto; max-height: 480px; }
img.plot { max-width: 100%; } img.vimg { width: 96px; image-rendering: pixelated; margin: 1px; }
img.thumb { max-width: 96px; max-height: 96px; image-rendering: pixelated; }
.tok { display: inline-block; margin: 1px 2px; padding: 0 3px; background: #eef; border-radius: 3px; font: 12px ui-monospace, monospace; }
.tok sub { color: #669; } .tok.ph { background: #ffd54f; font-weight: bold; }
nav a { margin-right: 10px; }
</style></head>
<body>
<h1>tiforge report: {{ title }}</h1>
<p class="muted" id="status">{{ status }} &middot; step {{ step }}{% if max_steps %} of {{ max_steps }}{% endif %}
{% if loss is not none %} &middot; last loss {{ "%.4f"|format(loss) }}{% endif %} &middot; written {{ written_at }} ({{ moment }})
<br>run folder: <code>{{ run_dir }}</code></p>
<nav><a href="#loss">loss</a><a href="#norms">norms</a><a href="#nearest">nearest tokens</a><a href="#validation">validation</a>
<a href="#data">data</a><a href="#timings">timings</a><a href="#files">files</a><a href="#config">config</a></nav>

<h2 id="loss">Loss and learning rate</h2>
{% if loss_plot %}<img class="plot" id="loss-plot" alt="loss and learning rate over steps" src="{{ loss_plot }}">
{% else %}<p class="muted">No step yet.</p>{% endif %}

<h2 id="norms">Vector norms against the vocabulary</h2>
{% if norm_plot %}<img class="plot" id="norm-plot" alt="vector norms over steps" src="{{ norm_plot }}">{% endif %}
<table id="norm-ranges"><tr><th>text encoder</th><th>vocabulary norm: min</th><th>5%</th><th>median</th><th>mean</th><th>95%</th><th>max</th><th>vectors now</th></tr>
{% for name, r in ranges.items() %}<tr><td>{{ name }}</td><td>{{ "%.4f"|format(r.min) }}</td><td>{{ "%.4f"|format(r.p5) }}</td>
<td>{{ "%.4f"|format(r.median) }}</td><td>{{ "%.4f"|format(r.mean) }}</td><td>{{ "%.4f"|format(r.p95) }}</td><td>{{ "%.4f"|format(r.max) }}</td>
<td>{% for n in (nearest[-1].norms[name] if nearest else []) %}{{ labels[name][loop.index0] }}: {{ "%.4f"|format(n) }}{% if not loop.last %}, {% endif %}{% endfor %}</td></tr>
{% endfor %}</table>

<h2 id="nearest">Nearest vocabulary tokens (cosine)</h2>
<table id="nearest-table"><tr><th>step</th><th>when</th>{% for name in ranges %}{% for label in labels[name] %}<th>{{ label }}{% if ranges|length > 1 %} [{{ name }}]{% endif %}</th>{% endfor %}{% endfor %}</tr>
{% for row in nearest %}<tr><td>{{ row.step }}</td><td>{{ row.moment }}</td>
{% for name in ranges %}{% for vector in row.nearest[name] %}<td>{% for token, id, cosine in vector %}{{ token }} <span class="muted">{{ "%.2f"|format(cosine) }}</span>{% if not loop.last %}<br>{% endif %}{% endfor %}</td>{% endfor %}{% endfor %}</tr>
{% endfor %}</table>

<h2 id="validation">Validation pictures</h2>
{% if validations %}<table id="validation-grids"><tr><th>step</th>{% for prompt in prompts %}<th>{{ prompt }}</th>{% endfor %}</tr>
{% for v in validations %}<tr><td><a href="{{ v.folder|url }}">{{ v.label }}</a>{% if v.step is not none %}<br>step {{ v.step }}{% endif %}</td>
{% for i in range(prompts|length) %}<td>{% for pic in v.cells.get(i, []) %}<a href="{{ pic.file|url }}"><img class="vimg" src="{{ pic.uri }}" data-file="{{ pic.file }}" alt="{{ pic.file }}"></a>{% endfor %}</td>{% endfor %}</tr>
{% endfor %}</table>
{% else %}<p class="muted">No validation yet{% if not prompts %} (the config has no validation_prompts){% endif %}.</p>{% endif %}

<h2 id="data">Data: {{ data.total }} picture(s){% if data.pictures|length < data.total %}, the first {{ data.pictures|length }} shown{% endif %}</h2>
<p class="muted">Captions as trained in the first epoch (templates and shuffled tags draw again each epoch), with the
first tokenizer's token ids; the placeholder's ids {{ data.placeholder_ids|join(", ") }} are marked.</p>
<table id="data-table"><tr><th>picture</th><th>name</th><th>caption as trained and its tokens</th></tr>
{% for p in data.pictures %}<tr><td>{% if p.thumbnail %}<img class="thumb" src="{{ p.thumbnail }}" alt="{{ p.name }}">{% endif %}</td>
<td>{{ p.name }}{% if p.repeats > 1 %}<br>&times;{{ p.repeats }}{% endif %}{% if p.regularization %}<br>regularization{% endif %}</td>
<td><div class="caption">{{ p.caption }}</div>{% if p.original_caption is not none and p.original_caption != p.caption %}<div class="muted">caption file: {{ p.original_caption }}</div>{% endif %}
<div>{% for t in p.tokens %}<span class="tok{% if t.placeholder %} ph{% endif %}">{{ t.text }}<sub>{{ t.id }}</sub></span>{% endfor %}</div>
{% if p.cut %}<div class="muted">longer than the token window: training sees only its start</div>{% endif %}</td></tr>
{% endfor %}</table>

<h2 id="timings">Timings</h2>
<table id="timings-table">{% for name, value in timings %}<tr><th>{{ name }}</th><td>{{ value }}</td></tr>{% endfor %}</table>

<h2 id="files">Files</h2>
<table id="files-table"><tr><th>what</th><th>where (in the run folder)</th><th></th></tr>
{% for f in files %}<tr><td>{{ f.kind }}</td><td><a href="{{ f.path|url }}"><code>{{ f.path }}</code></a></td><td class="muted">{{ f.note }}</td></tr>
{% endfor %}</table>

<h2 id="config">Config (resolved)</h2>
<pre id="config-yaml">{{ config_yaml }}</pre>
</body></html>
"""

_environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
_environment.filters["url"] = lambda path: quote(str(path))
_template = _environment.from_string(TEMPLATE)


def render(context: dict) -> str:
    return _template.render(**context)
