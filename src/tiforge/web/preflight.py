"""What the form checks beyond the config's own rules: what a training would refuse in its first
seconds (a missing model or data folder, a placeholder the vocabulary already has, an initializer
the tokenizer splits), so that Start stays disabled for it. Cheap enough for every keystroke: no
model is loaded (every SD/SDXL tokenizer shares CLIP's vocabulary, so the bundled one answers) and
only local folders are listed - hub models and hub datasets are left to the training."""

from __future__ import annotations

LOCAL_DATASETS = ("IMAGE_DIR_DATASET", "IMAGE_CAPTION_DIR_DATASET", "IMAGE_CAPTION_JSONL_DATASET")


def problems(config) -> list[dict]:
    """[{"field", "message"}] for each problem the training's start would raise."""
    found = [_model(config.model), _data(config)]
    found += _tokens(config)
    return [p for p in found if p]


def _problem(field: str, err: Exception) -> dict:
    return {"field": field, "message": str(err)}


def _model(model: str) -> dict | None:
    from tiforge.model.loading import ModelLoadError, check_model_reference

    try:
        check_model_reference(model)
    except ModelLoadError as err:
        return _problem("model", err)
    return None


def _data(config) -> dict | None:
    from tiforge.data.sources import DatasetError, find_records

    dataset = config.data_loader.dataset
    if dataset.type not in LOCAL_DATASETS:
        return None
    try:
        find_records(config.data_loader)
    except (DatasetError, OSError) as err:
        field = "data_loader.dataset.dataset_dir" if hasattr(dataset, "dataset_dir") else "data_loader.dataset"
        return _problem(field, err)
    return None


def _tokens(config) -> list[dict]:
    from tiforge.model.clip_tokenizer import load_clip_tokenizer
    from tiforge.model.placeholders import TokenError, add_placeholder, single_token_id

    tokenizer = load_clip_tokenizer()
    found = []
    entries = [("", config)] + [(f"additional_embeddings[{i}].", e) for i, e in enumerate(config.additional_embeddings)]
    for prefix, entry in entries:
        try:
            add_placeholder(tokenizer, entry.placeholder_token, entry.num_vectors)
        except TokenError as err:
            found.append(_problem(f"{prefix}placeholder_token", err))
        if entry.initializer_token:
            try:
                single_token_id(tokenizer, entry.initializer_token, f"{prefix}initializer_token")
            except TokenError as err:
                found.append(_problem(f"{prefix}initializer_token", err))
    return found
