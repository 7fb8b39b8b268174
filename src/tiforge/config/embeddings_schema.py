"""Several embeddings in one run: the config's `additional_embeddings`.

The top-level `placeholder_token` / `initializer_token` / ... stay the first embedding, exactly as
invoke-training writes them; every further embedding is one entry of `additional_embeddings`
(OneTrainer's "additional embeddings"; its own key names are accepted too):

    additional_embeddings:
      - placeholder_token: <my-style>        # OneTrainer: placeholder
        initializer_token: painting          # or initial_phrase (OneTrainer: initial_embedding_text)
                                             # or initial_embedding_file (OneTrainer: model_name)
        num_vectors: 2                       # OneTrainer: token_count
        learning_rate: 5.0e-3                # default: the run's optimizer.learning_rate
        stop_after_steps: 300                # OneTrainer: stop_training_after; frozen from then on

Everything is checked up front, each problem naming the entry (`additional_embeddings[1].placeholder_token`).
"""

from __future__ import annotations

from pydantic import AliasChoices, Field, field_validator, model_validator

from tiforge.config.data_schema import StrictModel


def _alias(name: str, onetrainer: str) -> AliasChoices:
    return AliasChoices(name, onetrainer)


class AdditionalEmbeddingConfig(StrictModel):
    placeholder_token: str = Field(validation_alias=_alias("placeholder_token", "placeholder"))
    initializer_token: str | None = None
    initial_phrase: str | None = Field(None, validation_alias=_alias("initial_phrase", "initial_embedding_text"))
    initial_embedding_file: str | None = Field(None, validation_alias=_alias("initial_embedding_file", "model_name"))
    num_vectors: int = Field(1, ge=1, le=75, validation_alias=_alias("num_vectors", "token_count"))
    learning_rate: float | None = Field(None, gt=0)
    """This embedding's rate (its own optimizer parameter group); default: the run's learning rate."""
    stop_after_steps: int | None = Field(None, ge=1, validation_alias=_alias("stop_after_steps", "stop_training_after"))
    """Train this embedding for this many steps, then keep its vectors exactly as they are."""

    @field_validator("placeholder_token")
    @classmethod
    def _one_word(cls, token: str) -> str:
        if not token.strip() or any(ch.isspace() for ch in token):
            raise ValueError(f"placeholder_token {token!r} must be one word without spaces, such as '<my-style>'")
        return token

    @property
    def initializers(self) -> list[str]:
        return [n for n in ("initializer_token", "initial_phrase", "initial_embedding_file") if getattr(self, n) is not None]


class SeveralEmbeddingsMixin(StrictModel):
    """The config's fields for training several embeddings at once (the first is the top-level one)."""

    additional_embeddings: list[AdditionalEmbeddingConfig] = Field(default_factory=list)
    """Further embeddings trained in the same run, each with its own token, initializer, vector count,
    learning rate and optional stop_after_steps; each saved to its own file."""

    @model_validator(mode="after")
    def _several_embeddings_rules(self):
        problems = several_embeddings_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def all_placeholder_tokens(self) -> list[str]:
        return [self.placeholder_token, *(e.placeholder_token for e in self.additional_embeddings)]


def several_embeddings_problems(config) -> list[str]:
    from tiforge.training.run_folders import embedding_file_name

    problems: list[str] = []
    first_file = embedding_file_name(config.output_name or config.placeholder_token)
    seen = {config.placeholder_token: "placeholder_token"}
    files = {first_file: "placeholder_token" if not config.output_name else "output_name"}
    for i, entry in enumerate(config.additional_embeddings):
        where = f"additional_embeddings[{i}]"
        token = entry.placeholder_token
        if token in seen:
            problems.append(f"{where}.placeholder_token: {token!r} is already {seen[token]}; every embedding needs its "
                            "own token")
        else:
            overlaps = _substring_problems(where, token, seen)
            file = embedding_file_name(token)
            if not overlaps and file in files:
                overlaps.append(f"{where}.placeholder_token: {token!r} would be saved as {file}, as {files[file]} "
                                "is; choose tokens whose letters and digits differ")
            problems += overlaps
            seen[token] = f"{where}.placeholder_token"
            files.setdefault(file, f"{where}.placeholder_token")
        if len(entry.initializers) != 1:
            got = f" (got {', '.join(entry.initializers)})" if entry.initializers else " (none is set)"
            problems.append(f"{where}: set exactly one of initializer_token / initial_phrase / initial_embedding_file{got}")
        if entry.stop_after_steps is not None and config.max_train_steps is not None \
                and entry.stop_after_steps > config.max_train_steps:
            problems.append(f"{where}.stop_after_steps: {entry.stop_after_steps} is past the run's end "
                            f"(max_train_steps {config.max_train_steps}); lower it or leave it unset")
    return problems


def _substring_problems(where: str, token: str, seen: dict[str, str]) -> list[str]:
    """Captions are expanded by replacing each token's text, and its vectors are named token_1, token_2
    ...: a token inside another would also be replaced inside that one."""
    out = []
    for other, field in seen.items():
        if token in other or other in token:
            inner, outer = (token, other) if token in other else (other, token)
            out.append(f"{where}.placeholder_token: {token!r} and {field} {other!r} overlap ({inner!r} is part of "
                       f"{outer!r}), so a caption naming {outer!r} would also name {inner!r}; choose tokens that do "
                       "not contain each other, e.g. '<my-dog>' and '<my-style>'")
    return out
