"""Flags of InvokeAI's `invokeai-ti` (its textual-inversion trainer's command line)."""

from __future__ import annotations

from typing import Any

from tiforge.config.flag_spec import Flag
from tiforge.config.peer_flags import diffusers_example

NAME = "invokeai"
TITLE = "InvokeAI invokeai-ti"

# Its --model is the config field of the same name; with invokeai-ti's other flags it may also name a
# model installed in the InvokeAI root (resolved in config.flags).
FLAGS: dict[str, Flag] = {
    "root": Flag("install_embeddings_root", help="InvokeAI root: install the embedding there (= install_embeddings_root)"),
    "root_dir": Flag("install_embeddings_root", help="= root"),
}

REFUSED: dict[str, str] = {
    "gui": "the console front end is `tiforge ui`",
}

REQUIRED = {"model": "--model", "base_output_dir": "--output_dir",
            "placeholder_token": "--placeholder_token", "data_loader": "--train_data_dir"}


def recognises(names: set[str]) -> bool:
    return bool(names & {"root", "root_dir"}) or {"model", "output_dir"} <= names


# invokeai-ti is the diffusers example with InvokeAI's changes: the same defaults, except that it always
# scales the learning rate (its --scale_lr defaults to true) and starts from the word "*".
DEFAULTS: dict[str, Any] = {**diffusers_example.DEFAULTS, "scale_lr": True, "initializer_token": "*"}
DEFAULTS_UNLESS: dict[str, tuple[str, ...]] = {
    **diffusers_example.DEFAULTS_UNLESS, "initializer_token": ("initial_embedding_file", "initial_phrase"),
}
