"""`tiforge convert` and InvokeAI installation: move an embedding between the tools' layouts."""

from __future__ import annotations

from pathlib import Path

from tiforge.embeddings.files import EmbeddingFileError, load_embedding, save_embedding


def convert(src: str | Path, dst: str | Path, to: str, token: str | None = None, precision: str | None = None) -> Path:
    """Rewrite `src` in format `to`, the container chosen by `dst`'s extension; vectors unchanged."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise EmbeddingFileError(f"{dst}: output would overwrite the input; choose another name")
    emb = load_embedding(src)
    name = token or emb.trigger(src)
    vectors = emb.arrays if emb.is_sdxl else emb.single_array
    return save_embedding(dst, name, vectors, emb.metadata, format=to, precision=precision, step=emb.step)


def install_for_invokeai(src: str | Path, root: str | Path, trigger: str | None = None) -> Path:
    """InvokeAI's layout: `<root>/embeddings/<trigger>/learned_embeds.bin`. Its probe refuses a
    `{token: [n, W]}` file, so SD embeddings go in as A1111's `string_to_param` (any vector count, and
    the trigger kept as `name` for diffusers) and SDXL ones as `clip_l` + `clip_g`."""
    emb = load_embedding(src)
    name = trigger or emb.trigger(Path(src))
    target = Path(root).expanduser() / "embeddings" / name.strip("<>") / "learned_embeds.bin"
    return save_embedding(target, name, emb.arrays if emb.is_sdxl else emb.single_array, emb.metadata,
                          format="kohya" if emb.is_sdxl else "a1111", step=emb.step)
