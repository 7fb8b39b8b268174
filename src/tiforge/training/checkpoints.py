"""Checkpoints: the embedding so far plus everything a run needs to continue exactly where it
stopped (optimizer, LR schedule, gradient scaler, counters, data position, every RNG state).

A checkpoint folder is filled under a hidden name and renamed when complete, so a crash, a kill
or a full disk at any moment leaves the earlier checkpoints loadable and never a half one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from tiforge.atomic import atomic_write, atomic_write_text
from tiforge.embeddings.files import save_embedding
from tiforge.training.run_folders import embedding_file_name

STATE_FILE = "training_state.pt"
POSITION_FILE = "position.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names it."""


def capture_rng() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        # as plain lists: the state file is read back with weights_only=True
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict) -> None:
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: Path, kind: str, index: int, token: str, vectors: torch.Tensor, metadata: dict,
    max_checkpoints: int | None, state: dict | None = None, config_yaml: str | None = None,
    folder: Path | None = None, siblings: str | None = None, more_embeddings=(), **save_options,
) -> Path:
    """Write `folder` (default `checkpoints/checkpoint-{kind}_{index}`); only then drop the oldest of
    the checkpoints matching `siblings` (a glob under run_dir; default: those of the same kind).
    `more_embeddings`: (file name, token, vectors) of the run's further embeddings, saved beside the first."""
    final = folder or run_dir / "checkpoints" / f"checkpoint-{kind}_{index:08d}"
    tmp = final.parent / f".{final.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    extension = save_options.pop("extension", "safetensors")
    file_name = save_options.pop("file_name", None) or embedding_file_name(token, extension)
    save_embedding(tmp / file_name, token, vectors, metadata, **save_options)
    for other_name, other_token, other_vectors in more_embeddings:
        save_embedding(tmp / other_name, other_token, other_vectors, metadata, **save_options)
    if state is not None:
        atomic_write(tmp / STATE_FILE, lambda p: torch.save(state, str(p)))
        position = {k: state[k] for k in ("global_step", "epoch", "batches_in_epoch")}
        atomic_write_text(tmp / POSITION_FILE, json.dumps(position))
    if config_yaml is not None:
        atomic_write_text(tmp / "config.yaml", config_yaml)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if max_checkpoints is not None:
        # (length, name) orders numbered names whether or not the numbers are zero-padded
        done = sorted((p for p in run_dir.glob(siblings or f"checkpoints/checkpoint-{kind}_*") if p.is_dir()),
                      key=lambda p: (len(p.name), p.name))
        for old in done[: max(0, len(done) - max_checkpoints)]:
            shutil.rmtree(old)
    return final


def _complete(folder: Path) -> bool:
    return (folder / STATE_FILE).is_file() and (folder / POSITION_FILE).is_file() and not folder.name.startswith(".")


def _step_of(folder: Path) -> int:
    return json.loads((folder / POSITION_FILE).read_text())["global_step"]


def _latest_in(folders) -> Path | None:
    done = [f for f in folders if _complete(f)]
    return max(done, key=lambda f: (_step_of(f), f.stat().st_mtime)) if done else None


def find_checkpoint(spec: str, base_output_dir: str | Path) -> Path:
    """`latest` (the newest run in base_output_dir that has one), a checkpoint folder, a run folder,
    or a checkpoint's name such as `checkpoint-step_00001500` (looked up in base_output_dir)."""
    base = Path(base_output_dir).expanduser()
    if spec == "latest" and base.is_dir():
        flat = _latest_in(base.iterdir())  # the diffusers / kohya layouts: checkpoints right in base
        if flat:
            return flat
    if spec != "latest" and (base / spec).is_dir() and _complete(base / spec) and not Path(spec).is_absolute():
        return base / spec  # `checkpoint-1500` as the diffusers guide spells it
    if spec == "latest":
        runs = sorted((p for p in base.glob("*") if (p / "checkpoints").is_dir()), reverse=True) if base.is_dir() else []
        for run in runs:
            found = _latest_in((run / "checkpoints").iterdir())
            if found:
                return found
        raise CheckpointError(f"resume_from_checkpoint: latest: no complete checkpoint in any run folder of {base}")
    path = Path(spec).expanduser()
    if path.is_dir() and _complete(path):
        return path
    if path.is_dir() and (path / "checkpoints").is_dir():
        found = _latest_in((path / "checkpoints").iterdir())
        if found:
            return found
        raise CheckpointError(f"resume_from_checkpoint: {path}: this run folder has no complete checkpoint")
    if path.is_dir():
        raise CheckpointError(f"resume_from_checkpoint: {path}: not a checkpoint (no {STATE_FILE}) nor a run folder; "
                              "give one of its checkpoint folders" + _existing_checkpoints(path))
    named = sorted(base.glob(f"*/checkpoints/{spec}")) if base.is_dir() else []
    named = [p for p in named if _complete(p)]
    if named:
        return named[-1]
    raise CheckpointError(
        f"resume_from_checkpoint: {spec}: no such checkpoint; give 'latest', a checkpoint folder, a run folder, "
        f"or a checkpoint name found under {base}" + _existing_checkpoints(base)
    )


def _existing_checkpoints(base: Path, limit: int = 20) -> str:
    """The complete checkpoints under base, newest first, for a message that names a wrong one."""
    # run folders' checkpoints/, and the flat layouts' checkpoint folders right in base
    candidates = [*base.glob("*/checkpoints/*"), *base.glob("*")] if base.is_dir() else []
    found = [p for p in candidates if p.is_dir() and _complete(p)]
    if not found:
        return f". There is no checkpoint under {base} yet."
    found.sort(key=lambda p: (str(p.parent), _step_of(p)), reverse=True)
    more = f"\n  ... and {len(found) - limit} more" if len(found) > limit else ""
    return ". These exist:\n  - " + "\n  - ".join(str(p) for p in found[:limit]) + more


def load_training_state(folder: Path) -> dict:
    try:
        return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{folder / STATE_FILE}: unreadable training state ({err})") from None


# Fields that may change between the stopped run and its resumption; anything else must match.
RESUMABLE_CHANGES = {
    "max_train_steps", "max_train_epochs", "save_every_n_steps", "save_every_n_epochs", "validate_every_n_steps",
    "validate_every_n_epochs", "max_checkpoints", "validation_prompts", "negative_validation_prompts",
    "num_validation_images_per_prompt", "num_validation_inference_steps", "validation_guidance_scale",
    "enable_cpu_offload_during_validation", "report_to", "resume_from_checkpoint", "dataloader_num_workers",
    "install_embeddings_root", "save_format", "save_model_as", "save_precision", "max_nonfinite_steps",
    "base_output_dir", "seed", "output_layout", "save_embedding_every_n_steps", "num_vectors", "output_name", "allow_tf32", "push_to_hub", "hub_model_id", "hub_token", "xformers", "gradient_checkpointing",
    # kohya's run management (issue 18): what is saved and sampled, not what is trained
    "save_state", "save_state_on_train_end", "save_last_n_epochs", "save_last_n_epochs_state", "save_last_n_steps",
    "save_last_n_steps_state", "sample_prompts", "sample_every_n_steps", "sample_every_n_epochs", "sample_at_first",
    "sample_sampler",
}


def changed_vector_count(state: dict, config) -> list[str]:
    """num_vectors may differ in the config only where it does not decide the count (a phrase or an
    embedding file brings its own); otherwise the saved vectors cannot continue as another count."""
    saved = state["config"].get("num_vectors")
    if config.initial_phrase or config.initial_embedding_file or saved is None or saved == config.num_vectors:
        return []
    return [f"num_vectors: checkpoint has {saved!r}, config has {config.num_vectors!r}"]


def incompatible_fields(saved: dict, current: dict, prefix: str = "") -> list[str]:
    if not prefix:  # checkpoints from before several embeddings per run held only the first
        saved = {"additional_embeddings": [], **saved}
    out = []
    for key in sorted(set(saved) | set(current)):
        if key in RESUMABLE_CHANGES:
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += incompatible_fields(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: checkpoint has {a!r}, config has {b!r}")
    return out
