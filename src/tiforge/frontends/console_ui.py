"""`tiforge ui`: a keyboard-driven console front end in the manner of `invokeai-ti --gui`.

A form with the fields of InvokeAI's trainer (and the rarer ones under "Advanced"), validated as
typed with the config's own rules and messages; Start trains with a live view (step, loss
sparkline, learning rate, speed, time left, latest validation images) and Stop saves and stops.
The form remembers its last values and can save them as a YAML file `tiforge train` runs unchanged;
Ctrl+O loads a YAML config into it. Further embeddings of the same run (`additional_embeddings`) are
one field, in the `--placeholder` syntax: `<my-style>:painting:2; <my-pattern>:stripes:lr=1e-3`.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import yaml
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.suggester import SuggestFromList
from textual.widgets import Button, Checkbox, Collapsible, Footer, Header, Input, Label, Select, Sparkline, Static

from tiforge.config.schema import ConfigError
from tiforge.config.loading import config_from_dict

SCHEDULERS = ["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"]

# (id, label, default) of the text fields; checkboxes and selects follow below.
MAIN_FIELDS = [
    ("model", "Base model (pick below, or a hub id / folder / .safetensors)", ""),
    ("trigger", "Trigger term", ""),
    ("initializer", "Initializer (one word)", "*"),
    ("num_vectors", "Vectors", "1"),
    ("data_dir", "Training data folder", ""),
    ("output_dir", "Output folder", ""),
    ("resolution", "Image resolution", "512"),
    ("max_steps", "Max training steps", "3000"),
    ("batch_size", "Batch size", "8"),
    ("learning_rate", "Learning rate", "0.0005"),
    ("accumulation", "Gradient accumulation steps", "1"),
    ("warmup", "Warmup steps", "0"),
]
ADVANCED_FIELDS = [
    ("seed", "Seed", "0"),
    ("save_every", "Save a checkpoint every N steps", "500"),
    ("validation_prompt", "Validation prompt (use the trigger)", ""),
    ("validate_every", "Validate every N steps", "500"),
    ("validation_images", "Validation images per prompt", "4"),
    ("min_snr_gamma", "Min-SNR gamma (empty: off)", "5.0"),
    ("max_checkpoints", "Checkpoints kept (empty: all)", ""),
    ("clip_skip", "Clip skip (SD 1.x/2.x; empty: off, 2: penultimate layer)", ""),
    ("more_embeddings", "Further embeddings: TOKEN:INIT[:N][:lr=R][:stop=S]; ...", ""),
    ("load_path", "YAML config to load (Ctrl+O)", ""),
]
CHECKS = [("center_crop", "Center crop images", True), ("scale_lr", "Scale learning rate by GPUs, steps and batch", True),
          ("resume", "Resume from last saved checkpoint", False)]
ADVANCED_CHECKS = [("cache_latents", "Cache VAE outputs", False), ("gradient_checkpointing", "Gradient checkpointing", False)]
# The optimizers whose defaults need no further settings (see README "Optimizers and schedules"); any
# other name works from YAML and flags.
OPTIMIZERS = ["AdamW", "Prodigy", "AdamWScheduleFree", "Lion", "DAdaptAdam"]
SELECTS = [
    ("mixed_precision", "Mixed precision", ["no", "fp16", "bf16"], "no"),
    ("optimizer", "Optimizer (Prodigy, DAdaptAdam: learning rate 1.0)", OPTIMIZERS, "AdamW"),
    ("attention", "Attention", ["sdpa", "xformers"], "sdpa"),
    ("lr_scheduler", "Learning rate scheduler", SCHEDULERS, "constant"),
]
ADVANCED_SELECTS = [
    ("learnable_property", "Learnable property", ["object", "style"], "object"),
    ("save_format", "Save format", ["diffusers", "a1111", "kohya"], "diffusers"),
]


def config_home() -> Path:
    return Path(os.environ.get("TIFORGE_CONFIG_HOME") or Path.home() / ".config" / "tiforge")


def tiforge_home() -> Path:
    return Path(os.environ.get("TIFORGE_HOME") or Path.home() / "tiforge")


def find_models(folders: list[Path]) -> list[str]:
    """Diffusers folders and single-file checkpoints under the model folders (three levels deep)."""
    found: list[str] = []
    for root in folders:
        if not root.is_dir():
            continue
        for depth in range(4):
            for path in sorted(root.glob("/".join(["*"] * (depth + 1)) if depth else "*")):
                if path.is_dir() and (path / "model_index.json").is_file():
                    found.append(str(path))
                elif path.suffix in (".safetensors", ".ckpt") and path.is_file() and path.stat().st_size > 10 * 2**20:
                    found.append(str(path))
    return sorted(set(found))


def model_folders() -> list[Path]:
    env = os.environ.get("TIFORGE_MODEL_DIRS")
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    return [tiforge_home() / "models", Path.home() / "invokeai" / "models", Path.home() / "models"]


def has_checkpoints(output_dir: str) -> bool:
    return bool(output_dir) and any(Path(output_dir).expanduser().glob("*/checkpoints/checkpoint-*/training_state.pt"))


def form_to_config(v: dict) -> dict:
    """The form's values as a config dict (SD_TEXTUAL_INVERSION, or SDXL_ for an SDXL model)."""
    def number(key, cast=int):
        text = str(v.get(key, "")).strip()
        if not text:
            return None
        try:
            return cast(text)
        except ValueError:
            return text  # the config reports it, with the field's name

    from tiforge.model.loading import is_sdxl_model

    trigger = v.get("trigger", "").strip()
    model = v.get("model", "").strip()
    # The family comes from the chosen model itself (no network: a hub id counts as SD until loaded).
    sdxl = bool(model) and is_sdxl_model(model, online=False)
    save_format = v.get("save_format", "diffusers")
    cfg = {
        "type": "SDXL_TEXTUAL_INVERSION" if sdxl else "SD_TEXTUAL_INVERSION",
        "seed": number("seed"),
        "base_output_dir": v.get("output_dir", "").strip(),
        "model": model,
        "placeholder_token": trigger,
        "initializer_token": v.get("initializer", "").strip() or None,
        "num_vectors": number("num_vectors"),
        "max_train_steps": number("max_steps"),
        "train_batch_size": number("batch_size"),
        "gradient_accumulation_steps": number("accumulation"),
        "optimizer": {"optimizer_type": v.get("optimizer") or "AdamW", "learning_rate": number("learning_rate", float)},
        "scale_lr": bool(v.get("scale_lr")),
        "lr_scheduler": v.get("lr_scheduler", "constant"),
        "lr_warmup_steps": number("warmup"),
        "mixed_precision": v.get("mixed_precision", "no"),
        "xformers": v.get("attention") == "xformers",
        "gradient_checkpointing": bool(v.get("gradient_checkpointing")),
        "cache_vae_outputs": True if v.get("cache_latents") else None,  # unticked: cache when exact
        "save_every_n_steps": number("save_every"),
        "max_checkpoints": number("max_checkpoints"),
        "min_snr_gamma": number("min_snr_gamma", float),
        "clip_skip": number("clip_skip"),
        # SDXL embeddings exist only in the clip_l/clip_g layout: its default applies
        "save_format": None if sdxl and save_format == "diffusers" else save_format,
        "save_model_as": "pt" if v.get("save_format") == "a1111" else "safetensors",
        "report_to": "tensorboard",
        "data_loader": {
            "type": "TEXTUAL_INVERSION_SD_DATA_LOADER",
            "dataset": {"type": "IMAGE_DIR_DATASET", "dataset_dir": v.get("data_dir", "").strip()},
            "caption_preset": v.get("learnable_property", "object"),
            "resolution": number("resolution"),
            "center_crop": bool(v.get("center_crop", True)),
        },
    }
    prompt = v.get("validation_prompt", "").strip()
    if prompt:
        cfg["validation_prompts"] = [prompt]
        cfg["validate_every_n_steps"] = number("validate_every")
        cfg["num_validation_images_per_prompt"] = number("validation_images")
    if v.get("resume"):
        cfg["resume_from_checkpoint"] = "latest"
    more = str(v.get("more_embeddings") or "").strip()
    if more:
        from tiforge.config.placeholder_flag import parse_placeholders

        cfg["additional_embeddings"] = parse_placeholders(more, "Further embeddings")
    return {k: val for k, val in cfg.items() if val is not None or k in ("seed",)}


# form field <- config path; the inverse of form_to_config for what the form has
_FORM_OF_CONFIG = {
    "model": "model", "trigger": "placeholder_token", "initializer": "initializer_token", "num_vectors": "num_vectors",
    "data_dir": "data_loader.dataset.dataset_dir", "output_dir": "base_output_dir", "resolution": "data_loader.resolution",
    "max_steps": "max_train_steps", "batch_size": "train_batch_size", "learning_rate": "optimizer.learning_rate",
    "accumulation": "gradient_accumulation_steps", "warmup": "lr_warmup_steps", "seed": "seed",
    "save_every": "save_every_n_steps", "validate_every": "validate_every_n_steps",
    "validation_images": "num_validation_images_per_prompt", "min_snr_gamma": "min_snr_gamma",
    "max_checkpoints": "max_checkpoints", "clip_skip": "clip_skip", "center_crop": "data_loader.center_crop",
    "scale_lr": "scale_lr", "mixed_precision": "mixed_precision", "optimizer": "optimizer.optimizer_type",
    "lr_scheduler": "lr_scheduler", "learnable_property": "data_loader.caption_preset", "save_format": "save_format",
    "gradient_checkpointing": "gradient_checkpointing",
}


def config_to_form(path: str) -> tuple[dict, list[str]]:
    """A YAML config's values for the form's fields (validated first), and the fields it sets that the
    form cannot show (they would not be trained from the form)."""
    from tiforge.config.dotted import MISSING, lookup
    from tiforge.config.loading import load_config
    from tiforge.config.placeholder_flag import format_placeholder

    config = load_config(path)
    data = config.model_dump(mode="json", exclude_unset=True)
    values = {}
    for key, where in _FORM_OF_CONFIG.items():
        value = lookup(data, where)
        if value is not MISSING and value is not None:
            values[key] = value if isinstance(value, bool) else str(value)
    if config.validation_prompts:
        values["validation_prompt"] = config.validation_prompts[0]
    values["more_embeddings"] = "; ".join(format_placeholder(e.model_dump()) for e in config.additional_embeddings)
    shown = set(_FORM_OF_CONFIG.values()) | {"validation_prompts", "additional_embeddings", "type", "report_to",
                                             "data_loader.type"}
    if lookup(data, "data_loader.dataset.type") in (MISSING, "IMAGE_DIR_DATASET"):
        shown.add("data_loader.dataset.type")  # the form's data is a folder of pictures, captioned by templates
    left_out = sorted(p for p in _dotted_paths(data) if p not in shown)
    return values, left_out


def _dotted_paths(data: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in data.items():
        path = f"{prefix}{key}"
        out += _dotted_paths(value, path + ".") if isinstance(value, dict) and value else [path]
    return out


class TrainerUI(App):
    """The form, then the live view of a run."""

    TITLE = "tiforge - textual inversion training"
    CSS = """
    #form { height: 1fr; }
    .row { height: auto; }
    .row Label { width: 46; padding: 1 1 0 0; }
    .row Input, .row Select { width: 1fr; }
    #errors { color: $error; height: auto; max-height: 8; padding: 0 1; }
    #live { height: 9; border: round $accent; padding: 0 1; }
    #buttons { height: auto; }
    Sparkline { height: 4; }
    """
    BINDINGS = [Binding("ctrl+n", "app.focus_next", "Next field"), Binding("ctrl+p", "app.focus_previous", "Previous"),
                Binding("ctrl+s", "save", "Save config"), Binding("ctrl+o", "load", "Load config"),
                Binding("ctrl+q", "quit", "Quit")]

    def __init__(self, prefs_path: Path | None = None, models: list[str] | None = None):
        super().__init__()
        self.prefs_path = prefs_path or config_home() / "ui.yaml"
        self.models = find_models(model_folders()) if models is None else models
        self.prefs = self._load_prefs()
        self.stop_event = threading.Event()
        self.losses: list[float] = []
        self.status = "editing"  # editing -> training -> finished / stopped / failed
        self.result = None
        self.last_error = ""

    # -- layout ---------------------------------------------------------------------------------

    def _value(self, key: str, default):
        return self.prefs.get(key, default)

    def _row(self, key: str, label: str, widget) -> Horizontal:
        return Horizontal(Label(label), widget, classes="row")

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="form"):
            if self.models:
                yield self._row("model_pick", "Models found locally",
                                Select([(m, m) for m in self.models], id="model_pick", allow_blank=True))
            for key, label, default in MAIN_FIELDS:
                suggester = SuggestFromList(self.models) if key == "model" else None
                yield self._row(key, label, Input(str(self._value(key, default)), id=key, suggester=suggester))
            for key, label, options, default in SELECTS:
                yield self._row(key, label, Select([(o, o) for o in options], value=self._value(key, default), id=key,
                                                   allow_blank=False))
            for key, label, default in CHECKS:
                yield Checkbox(label, value=bool(self._value(key, default)), id=key)
            with Collapsible(title="Advanced", collapsed=True):
                for key, label, default in ADVANCED_FIELDS:
                    yield self._row(key, label, Input(str(self._value(key, default)), id=key))
                for key, label, options, default in ADVANCED_SELECTS:
                    yield self._row(key, label, Select([(o, o) for o in options], value=self._value(key, default),
                                                       id=key, allow_blank=False))
                for key, label, default in ADVANCED_CHECKS:
                    yield Checkbox(label, value=bool(self._value(key, default)), id=key)
        # Below the scrolling form, always in view: what is wrong, the buttons, the live view.
        yield Static("", id="errors")
        with Horizontal(id="buttons"):
            yield Button("Start", id="start", variant="success")
            yield Button("Stop (save and exit)", id="stop", variant="error", disabled=True)
            yield Button("Save config", id="save")
        with VerticalScroll(id="live"):
            yield Static("", id="progress")
            yield Sparkline([], id="loss")
            yield Static("", id="validation")
        yield Footer()

    def on_mount(self) -> None:
        self.validate_form()

    # -- values, validation and preferences -----------------------------------------------------

    def values(self) -> dict:
        out = {}
        for key, *_ in MAIN_FIELDS + ADVANCED_FIELDS:
            out[key] = self.query_one(f"#{key}", Input).value
        for key, *_ in CHECKS + ADVANCED_CHECKS:
            out[key] = self.query_one(f"#{key}", Checkbox).value
        for key, *_ in SELECTS + ADVANCED_SELECTS:
            out[key] = self.query_one(f"#{key}", Select).value
        return out

    def validate_form(self):
        try:
            config = config_from_dict(form_to_config(self.values()), "form")
        except ConfigError as err:
            self.query_one("#errors", Static).update(str(err))
            self.query_one("#start", Button).disabled = True
            return None
        self.query_one("#errors", Static).update("")
        self.query_one("#start", Button).disabled = self.status == "training"
        return config

    def _load_prefs(self) -> dict:
        try:
            return yaml.safe_load(self.prefs_path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            return {}

    def _save_prefs(self) -> None:
        from tiforge.atomic import atomic_write_text

        atomic_write_text(self.prefs_path, yaml.safe_dump(self.values(), sort_keys=False))

    # -- events ---------------------------------------------------------------------------------

    @on(Input.Changed)
    @on(Checkbox.Changed)
    def _changed(self, event) -> None:
        if getattr(event.control, "id", None) == "trigger":
            self._prefill_from_trigger(event.value)
        if getattr(event.control, "id", None) == "output_dir":
            self.query_one("#resume", Checkbox).value = has_checkpoints(event.value)
        self.validate_form()

    @on(Select.Changed)
    def _selected(self, event: Select.Changed) -> None:
        if event.select.id == "model_pick" and isinstance(event.value, str):
            self.query_one("#model", Input).value = event.value
        self.validate_form()

    def _prefill_from_trigger(self, trigger: str) -> None:
        name = trigger.strip().strip("<>")
        if not name:
            return
        home = tiforge_home()
        for key, folder in (("data_dir", "training-data"), ("output_dir", "output")):
            field = self.query_one(f"#{key}", Input)
            previous = getattr(self, f"_auto_{key}", None)
            if not field.value or field.value == previous:  # only fill what the user has not typed
                field.value = str(home / folder / name)
                setattr(self, f"_auto_{key}", field.value)

    def action_save(self) -> None:
        config = self.validate_form()
        if config is None:
            self.notify("fix the form first", severity="error")
            return
        from tiforge.atomic import atomic_write_text
        from tiforge.config.loading import dump_config

        out = Path(config.base_output_dir).expanduser()
        path = atomic_write_text(out / f"{config.placeholder_token.strip('<>') or 'config'}.yaml", dump_config(config))
        self._save_prefs()
        self.saved_config = path
        self.notify(f"saved {path}; run it with: tiforge train {path}")

    def action_load(self) -> None:
        """The YAML file named in "YAML config to load" into the form (the additional embeddings too)."""
        path = self.query_one("#load_path", Input).value.strip()
        try:
            values, left_out = config_to_form(path)
        except (ConfigError, OSError) as err:
            self.notify(str(err), severity="error")
            return
        for key, value in values.items():
            widget = self.query_one(f"#{key}")
            try:
                widget.value = value
            except Exception:  # noqa: BLE001 - a Select refuses a value it does not offer (e.g. an optimizer)
                left_out.append(_FORM_OF_CONFIG.get(key, key))
        self.notify(f"loaded {path}" + (f"; the form has no place for: {', '.join(left_out)}" if left_out else ""))
        self.validate_form()

    @on(Button.Pressed, "#save")
    def _save_pressed(self) -> None:
        self.action_save()

    @on(Button.Pressed, "#stop")
    def _stop_pressed(self) -> None:
        self.stop_event.set()
        self.query_one("#progress", Static).update("stopping after this step: saving a checkpoint ...")

    @on(Button.Pressed, "#start")
    def _start_pressed(self) -> None:
        config = self.validate_form()
        if config is None:
            return
        self._save_prefs()
        self.status = "training"
        self.stop_event.clear()
        self.losses = []
        self.query_one("#start", Button).disabled = True
        self.query_one("#stop", Button).disabled = False
        self.tokens = ", ".join(config.all_placeholder_tokens)
        self.query_one("#progress", Static).update(f"loading the model ... (embeddings: {self.tokens})")
        self.started = time.monotonic()
        self.run_worker(lambda: self._train(config), thread=True, exclusive=True)

    # -- training in a worker thread ------------------------------------------------------------

    def _train(self, config) -> None:
        from tiforge.training.interrupts import TrainingStopped
        from tiforge.training.recipe import train

        try:
            self.result = train(config, progress=False, stop_event=self.stop_event, listener=self._hear)
            files = "\n      ".join(map(str, self.result.embedding_paths or [self.result.embedding_path]))
            self.call_from_thread(self._finish, "finished", f"done: {files}")
        except TrainingStopped as err:
            self.call_from_thread(self._finish, "stopped", str(err))
        except Exception as err:  # shown in the UI; the form stays for another try
            self.last_error = f"{type(err).__name__}: {err}"
            self.call_from_thread(self._finish, "failed", f"training failed: {self.last_error}")

    def _hear(self, event) -> None:
        from tiforge.training.events import Step

        if isinstance(event, Step):
            self.call_from_thread(self._show_step, event)

    def _show_step(self, info) -> None:
        self.losses.append(info.loss)
        elapsed = time.monotonic() - self.started
        rate = info.step / elapsed if elapsed > 0 else 0.0
        left = (info.max_steps - info.step) / rate if rate else 0.0
        self.query_one("#progress", Static).update(
            f"step {info.step}/{info.max_steps}   loss {info.loss:.4f}   lr {info.lr:.2e}   "
            f"{1 / max(info.seconds, 1e-9):.2f} it/s   time left {time.strftime('%H:%M:%S', time.gmtime(left))}"
            f"\nembeddings: {self.tokens}"
        )
        self.query_one("#loss", Sparkline).data = self.losses[-200:]
        folders = sorted(Path(info.run_dir).glob("validation/*/grid.png"), key=lambda p: p.stat().st_mtime)
        if folders:
            self.query_one("#validation", Static).update(f"latest validation: {folders[-1]}")

    def _finish(self, status: str, message: str) -> None:
        self.status = status
        self.query_one("#progress", Static).update(message)
        self.query_one("#stop", Button).disabled = True
        self.validate_form()


def run_ui() -> None:
    TrainerUI().run()
