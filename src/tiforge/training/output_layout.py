"""Where a run's files go, in the layout of the tool whose command line started it.

| output_layout | run folder                      | final embedding                          | checkpoints (resumable)         | intermediate embeddings |
|---------------|---------------------------------|------------------------------------------|---------------------------------|-------------------------|
| run_folders   | base_output_dir/<timestamp>/    | <name>.<ext>                             | checkpoints/checkpoint-step_N/  | (inside the checkpoints)|
| diffusers     | output_dir/                     | learned_embeds.safetensors (.bin)        | checkpoint-<step>/              | learned_embeds-steps-<step>.<ext> |
| invokeai      | output_dir/ (as diffusers), then installed in <root>/embeddings/<trigger>/ | | |                    |
| kohya         | output_dir/                     | <output_name>.<save_model_as>            | <name>-step<8 digits>-state/    | <name>-step<8 digits>.<ext>, <name>-<6 digits>.<ext> |

kohya's state folders are written with save_state (its --save_state), `<name>-state/` at the end with
save_state or save_state_on_train_end; without save_state a save writes the embedding alone.

run_folders is invoke-training's behaviour and the YAML default; the other three are chosen by the
flags of the diffusers example, invokeai-ti and kohya-ss sd-scripts (`layout_of_flags`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tiforge.training.run_folders import embedding_file_name

LAYOUTS = ("run_folders", "diffusers", "invokeai", "kohya")

def layout_of_flags(names: set[str]) -> str | None:
    """The output layout a command line asks for: None unless it names an --output_dir."""
    from tiforge.config.peer_flags import dialect_of

    if "output_dir" not in names:
        return None
    return dialect_of(names) or "diffusers"


def default_invokeai_root() -> Path | None:
    """The InvokeAI root invokeai-ti installs into: $INVOKEAI_ROOT, else ~/invokeai, when it exists."""
    for candidate in (os.environ.get("INVOKEAI_ROOT"), "~/invokeai"):
        if candidate and Path(candidate).expanduser().is_dir():
            return Path(candidate).expanduser()
    return None


@dataclass(frozen=True)
class OutputPlan:
    layout: str
    run_dir: Path
    stem: str  # kohya: output_name; run_folders: output_name or the placeholder
    extension: str

    @property
    def flat(self) -> bool:
        return self.layout != "run_folders"

    @property
    def final(self) -> Path:
        if self.layout in ("diffusers", "invokeai"):
            return self.run_dir / f"learned_embeds.{self.extension}"
        return self.run_dir / f"{self.stem}.{self.extension}"

    def checkpoint_dir(self, kind: str, index: int) -> Path:
        if self.layout in ("diffusers", "invokeai"):
            return self.run_dir / f"checkpoint-{index}"  # diffusers numbers checkpoints by step only
        if self.layout == "kohya":
            if kind == "end":  # --save_state_on_train_end
                return self.run_dir / f"{self.stem}-state"
            return self.run_dir / (f"{self.stem}-step{index:08d}-state" if kind == "step" else f"{self.stem}-{index:06d}-state")
        return self.run_dir / "checkpoints" / f"checkpoint-{kind}_{index:08d}"

    def checkpoint_siblings(self, kind: str) -> str:
        """A glob for the checkpoints max_checkpoints counts together with this kind."""
        if self.layout in ("diffusers", "invokeai"):
            return "checkpoint-*"
        if self.layout == "kohya":
            return {"step": f"{self.stem}-step*-state", "end": f"{self.stem}-state"}.get(kind, f"{self.stem}-[0-9]*-state")
        return f"checkpoints/checkpoint-{kind}_*"

    @property
    def snapshots_with_checkpoints(self) -> bool:
        """kohya writes an embedding file at every save; the diffusers example only at --save_steps."""
        return self.layout == "kohya"

    def snapshot(self, kind: str, index: int) -> Path:
        """An intermediate embedding beside the final one, named as the layout's tool names it."""
        if self.layout in ("diffusers", "invokeai"):
            return self.run_dir / f"learned_embeds-steps-{index}.{self.extension}"
        name = f"{self.stem}-step{index:08d}" if kind == "step" else f"{self.stem}-{index:06d}"
        return self.run_dir / ("" if self.layout == "kohya" else "embeddings") / f"{name}.{self.extension}"


    def for_additional(self, token: str) -> "OutputPlan":
        """Where a further embedding of the run goes: `<token>.<ext>` beside the first one (run folders,
        kohya); in the diffusers layouts its own `<token>/learned_embeds.<ext>`, the folder
        `load_textual_inversion` takes. Checkpoints stay the first plan's (each holds every embedding)."""
        stem = Path(embedding_file_name(token, self.extension)).stem
        folder = self.run_dir / stem if self.layout in ("diffusers", "invokeai") else self.run_dir
        return OutputPlan(self.layout, folder, stem, self.extension)


def plan_outputs(config, placeholder: str, run_dir: Path) -> OutputPlan:
    layout = config.output_layout
    extension = config.save_model_as
    if layout in ("diffusers", "invokeai"):
        # load_textual_inversion(folder) looks for exactly these two names
        extension = "safetensors" if extension == "safetensors" else "bin"
    stem = Path(embedding_file_name(config.output_name or placeholder, extension)).stem
    return OutputPlan(layout, run_dir, stem, extension)


def run_dir_of_checkpoint(folder: Path) -> Path:
    """A run-folders checkpoint sits in <run>/checkpoints/; the flat layouts' in the output folder itself."""
    return folder.parent.parent if folder.parent.name == "checkpoints" else folder.parent


def flat_run_dir(config) -> Path:
    base = Path(config.base_output_dir).expanduser()
    base.mkdir(parents=True, exist_ok=True)
    return base


def diffusers_concept_files(run_dir: Path, placeholder: str, caption_preset: str | None) -> list[tuple[Path, str]]:
    """The two small files the diffusers guide lists beside learned_embeds (the concepts-library uploader's)."""
    return [(run_dir / "token_identifier.txt", placeholder), (run_dir / "type_of_concept.txt", caption_preset or "object")]
