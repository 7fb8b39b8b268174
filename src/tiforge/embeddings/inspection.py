"""`tiforge inspect`: what is inside an embedding file, and what model it fits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tiforge.embeddings.compatibility import loads_in_line
from tiforge.embeddings.files import Embedding, load_embedding
from tiforge.model.widths import family_of_width


def family_of(emb: Embedding) -> str:
    if emb.is_sdxl:
        return "SDXL (clip_l 768 + clip_g 1280)"
    return family_of_width(emb.single_array.shape[1])


def describe(path: str | Path, model: str | None = None, single_file_config: str | None = None, top_k: int = 5) -> str:
    path = Path(path)
    emb = load_embedding(path)
    lines = [
        f"file:      {path}",
        f"format:    {emb.format}  (container {path.suffix})",
        f"trigger:   {emb.trigger(path)}" + (f"  (token stored in the file: {emb.token})" if emb.token else ""),
    ]
    for key, t in emb.arrays.items():
        label = key if emb.is_sdxl else "vectors"
        lines.append(f"{label + ':':<10} {t.shape[0]} x {t.shape[1]}  {t.dtype.name}")
    lines.append(f"fits:      {family_of(emb)}")
    lines.append(f"tools:     {loads_in_line(path)}")
    if emb.step is not None:
        lines.append(f"step:      {emb.step}")

    tables = _vocabulary_tables(model, single_file_config) if model else {}
    if tables and ("clip_g" in tables) != emb.is_sdxl:
        lines.append(f"model:     {model} is {'an SDXL' if 'clip_g' in tables else 'an SD 1.x/2.x'} model: "
                     "this embedding does not fit it")
        tables = {}
    for key, t in emb.arrays.items():
        norms = np.linalg.norm(t.astype(np.float32), axis=1)
        ref = ""
        table = tables.get(key) if emb.is_sdxl else next(iter(tables.values()), None)
        if table is not None:
            if table.shape[1] != t.shape[1]:
                ref = f"  (the model's width is {table.shape[1]}: this embedding does not fit it)"
                table = None
            else:
                ref = f"  (model vocabulary: median {table.float().norm(dim=1).median():.3f})"
        lines.append(f"norms{'[' + key + ']' if emb.is_sdxl else ''}:    " + " ".join(f"{n:.3f}" for n in norms) + ref)
        if table is not None:
            lines += _nearest(emb.vectors[key], table, tables["__tokenizer__"], top_k)
    if emb.metadata:
        lines.append("metadata:")
        lines += [f"  {k}: {v}" for k, v in sorted(emb.metadata.items())]
    if not model:
        lines.append("(give --model to compare with the model's vocabulary and list the nearest tokens)")
    return "\n".join(lines)


def _vocabulary_tables(model: str, single_file_config: str | None) -> dict:
    from tiforge.model.loading import is_sdxl_model, load_sd_components

    parts = load_sd_components(model, None, single_file_config, sdxl=is_sdxl_model(model, single_file_config))
    tables = {name: encoder.get_input_embeddings().weight.detach() for name, _, encoder in parts.text_encoders}
    return {**tables, "__tokenizer__": parts.tokenizer}


def _nearest(vectors, table, tokenizer, k: int) -> list[str]:
    from tiforge.embeddings.vocabulary import nearest_tokens, token_text  # torch: only with --model

    return [f"  nearest to vector {i}: " + ", ".join(f"{token_text(tokenizer, j)} ({s:.2f})" for j, s in row)
            for i, row in enumerate(nearest_tokens(vectors, table, k))]
