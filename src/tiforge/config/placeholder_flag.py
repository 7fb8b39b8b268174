"""`--placeholder TOKEN:INIT[:N][:lr=RATE][:stop=STEPS]`, repeatable: one embedding per flag.

INIT is one word (initializer_token), several words (initial_phrase, e.g. "oil painting") or an
embedding file (.safetensors/.pt/.bin/.ckpt: initial_embedding_file); N the vector count (num_vectors);
`lr=` its learning rate and `stop=` its stop_after_steps (further embeddings only).

The first --placeholder is the run's first embedding (placeholder_token, ...) unless the YAML or
--placeholder_token already names one; every other one becomes an entry of `additional_embeddings`.
`--additional_embeddings SPEC` (same syntax) always adds a further embedding.
"""

from __future__ import annotations

from typing import Any

from tiforge.config.schema import ConfigError

SYNTAX = "TOKEN:INIT[:N][:lr=RATE][:stop=STEPS], e.g. --placeholder '<my-style>:painting:2'"
_FILE_SUFFIXES = (".safetensors", ".pt", ".bin", ".ckpt")
_OPTIONS = {"lr": "learning_rate", "learning_rate": "learning_rate", "stop": "stop_after_steps",
            "stop_after_steps": "stop_after_steps"}
# marker keys of the flag overrides, resolved by `place_placeholders`
PENDING, PENDING_MORE = "\0--placeholder", "\0--additional_embeddings"


def parse_placeholder(text: str) -> dict[str, Any]:
    """One --placeholder value as an additional_embeddings entry (values as text: the schema converts)."""
    token, _, rest = text.partition(":")
    parts = rest.split(":") if rest else []
    entry: dict[str, Any] = {"placeholder_token": token}
    while parts and "=" in parts[-1]:
        key, _, value = parts.pop().partition("=")
        if key.strip() not in _OPTIONS:
            raise ConfigError(f"--placeholder {text}: unknown option {key!r} (lr= or stop=); expected {SYNTAX}")
        entry[_OPTIONS[key.strip()]] = value
    if len(parts) >= 2 and parts[-1].isdigit():
        entry["num_vectors"] = parts.pop()
    init = ":".join(parts)
    if not token or not init:
        raise ConfigError(f"--placeholder {text}: expected {SYNTAX}")
    kind = "initial_embedding_file" if init.lower().endswith(_FILE_SUFFIXES) else \
        "initial_phrase" if " " in init.strip() else "initializer_token"
    entry[kind] = init.strip()
    return entry


def add_placeholder_flag(value: Any, out: dict) -> None:
    """--placeholder's `apply`: collected in order, placed once the YAML is known (`place_placeholders`)."""
    out.setdefault(PENDING, []).append(parse_placeholder(str(value)))


def add_additional_embedding_flag(value: Any, out: dict) -> None:
    """--additional_embeddings' `apply`: a further embedding whatever else the command line says."""
    out.setdefault(PENDING_MORE, []).append(parse_placeholder(str(value)))


def place_placeholders(data: dict, placeholders: list[dict], more: list[dict]) -> None:
    """The first --placeholder becomes the first embedding where `data` has none yet; the others and
    every --additional_embeddings are appended to additional_embeddings."""
    if placeholders and data.get("placeholder_token") in (None, ""):
        first, *placeholders = placeholders
        for key in ("learning_rate", "stop_after_steps"):
            if key in first:
                raise ConfigError(f"--placeholder {first['placeholder_token']}: {key.split('_')[0]}= is for further "
                                  "embeddings; the first one trains at the run's rate to the end")
        data.update(first)
    if placeholders or more:
        data["additional_embeddings"] = [*(data.get("additional_embeddings") or []), *placeholders, *more]


def format_placeholder(entry: dict) -> str:
    """An additional_embeddings entry in the --placeholder syntax (the console UI's field)."""
    init = next(str(entry[k]) for k in ("initializer_token", "initial_phrase", "initial_embedding_file")
                if entry.get(k) is not None)
    parts = [str(entry["placeholder_token"]), init]
    if entry.get("num_vectors") not in (None, 1, "1"):
        parts.append(str(entry["num_vectors"]))
    parts += [f"{short}={entry[key]}" for short, key in (("lr", "learning_rate"), ("stop", "stop_after_steps"))
              if entry.get(key) is not None]
    return ":".join(parts)


def parse_placeholders(text: str, field: str) -> list[dict]:
    """Several specs separated by `;` (the console UI's field); errors name `field`."""
    try:
        return [parse_placeholder(spec.strip()) for spec in text.split(";") if spec.strip()]
    except ConfigError as err:
        raise ConfigError(f"{field}: {err}") from None
