"""The embedding page: inspect an uploaded or a run's embedding file (tiforge inspect's answer as
data), convert it to another tool's layout, generate pictures with it. Uploads are untrusted: they
are read only by tiforge's own readers (safetensors, or torch's weights_only unpickler), and a file
that is not a plain embedding is refused and deleted, never executed."""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path
from urllib.parse import unquote

import numpy as np

from tiforge.web.errors import ApiError
from tiforge.web.files import safe_file

SUFFIXES = (".safetensors", ".pt", ".bin", ".ckpt", ".pth", ".png", ".webp")
CONTAINER = {"diffusers": ".safetensors", "kohya": ".safetensors", "a1111": ".pt"}
_ID = re.compile(r"^[0-9a-f]{32}$")


def work_dir(root: Path, kind: str) -> Path:
    """A fresh folder under <root>/.tiforge-web/<kind>/."""
    folder = root / ".tiforge-web" / kind / uuid.uuid4().hex
    folder.mkdir(parents=True)
    return folder


def safe_name(filename: str | None) -> str:
    name = re.sub(r"[^\w.<>+-]", "_", Path(filename or "").name)[:120]
    if not name.lower().endswith(SUFFIXES):
        raise ApiError(400, f"{filename!r}: not an embedding file; expected one of {', '.join(SUFFIXES)}", "file")
    return name


def save_upload(root: Path, filename: str | None, source) -> tuple[str, Path]:
    """(upload id, path) of an uploaded file, copied from its (already size-limited) stream."""
    name = safe_name(filename)
    folder = work_dir(root, "uploads")
    with open(folder / name, "wb") as out:
        shutil.copyfileobj(source, out)
    return folder.name, folder / name


def uploaded(root: Path, upload_id: str) -> Path:
    folder = root / ".tiforge-web" / "uploads" / upload_id
    files = sorted(folder.iterdir()) if _ID.match(upload_id or "") and folder.is_dir() else []
    if not files:
        raise ApiError(404, f"no upload {upload_id}", "upload_id")
    return files[0]


def chosen_file(root: Path, upload_id: str | None, path: str | None) -> Path:
    """The file a request names: an upload, or a run's file by its /api/files/ address."""
    if upload_id:
        return uploaded(root, upload_id)
    if path:
        return safe_file(root, unquote(path.split("?")[0]).removeprefix("/api/files/"))
    raise ApiError(400, "give an uploaded file's upload_id or a run file's path", "path")


def _load(path: Path):
    from tiforge.embeddings.files import EmbeddingFileError, load_embedding

    try:
        return load_embedding(path)
    except EmbeddingFileError as err:
        raise ApiError(400, str(err).replace(str(path.parent) + "/", ""), "file") from None


def inspect(path: Path, model: str | None = None) -> dict:
    from tiforge.embeddings.compatibility import verdicts
    from tiforge.embeddings.inspection import family_of

    emb = _load(path)
    norms = {k: [round(float(n), 4) for n in np.linalg.norm(a.astype(np.float32), axis=1)] for k, a in emb.arrays.items()}
    first = next(iter(emb.arrays.values()))
    return {
        "layout": emb.format, "family": family_of(emb), "trigger": emb.trigger(path), "vectors": int(first.shape[0]),
        "dim": {k: int(a.shape[1]) for k, a in emb.arrays.items()} if emb.is_sdxl else int(first.shape[1]),
        "norms": norms if emb.is_sdxl else next(iter(norms.values())), "step": emb.step,
        "nearest": nearest(emb, model) if model else None,
        "loads_in": [{"tool": v.tool, "ok": v.loads, "reason": v.reason} for v in verdicts(path)],
    }


def nearest(emb, model: str, k: int = 5) -> list[dict]:
    """[{"vector": i, "encoder": name, "tokens": [[token, similarity], ...]}] against the model's vocabulary."""
    import torch

    from tiforge.embeddings.inspection import _vocabulary_tables

    tables = _vocabulary_tables(model, None)
    tokenizer = tables.pop("__tokenizer__")
    out = []
    for key, vectors in emb.vectors.items():
        table = tables.get(key) if emb.is_sdxl else next(iter(tables.values()))
        if table is None or table.shape[1] != vectors.shape[1]:
            raise ApiError(400, f"{model}: its text encoder width does not fit this embedding", "model")
        sims = torch.nn.functional.normalize(vectors.float(), dim=1) @ torch.nn.functional.normalize(table.float(), dim=1).T
        for i, row in enumerate(sims):
            top = row.topk(k)
            words = [[tokenizer.convert_ids_to_tokens(int(j)).replace("</w>", ""), round(float(s), 3)]
                     for s, j in zip(top.values, top.indices)]
            out.append({"vector": i, "encoder": key if emb.is_sdxl else None, "tokens": words})
    return out


def convert_to(root: Path, path: Path, to: str) -> Path:
    from tiforge.embeddings.convert import convert
    from tiforge.embeddings.files import EmbeddingFileError

    if to not in CONTAINER:
        raise ApiError(400, f"to: {to!r}; use diffusers, a1111 or kohya", "to")
    emb = _load(path)
    # AUTOMATIC1111 and kohya take the prompt word from the file name: the download is named by the bare
    # trigger, nothing added (each conversion has a fresh folder, so layouts never overwrite each other).
    target = work_dir(root, "converted") / f"{emb.trigger(path).strip('<>') or 'embedding'}{CONTAINER[to]}"
    try:
        return convert(path, target, to, token=emb.token)  # the trained placeholder, where the file records it
    except EmbeddingFileError as err:
        raise ApiError(400, str(err), "to") from None


def generate(root: Path, path: Path, model: str, prompt: str, steps: int = 20, seed: int = 0,
             count: int = 1) -> tuple[str, list[Path]]:
    from tiforge.embeddings.files import EmbeddingFileError
    from tiforge.embeddings.generate import generate_images
    from tiforge.model.loading import ModelLoadError

    trained = _load(path).token  # the placeholder the run trained, where the file records it
    folder = work_dir(root, "generated")
    try:
        paths = generate_images(model=model, embeddings=[str(path)], tokens=[trained] if trained else None,
                                prompt=prompt, steps=steps, seed=seed, count=count, out_dir=folder)
    except (EmbeddingFileError, ModelLoadError) as err:
        field = "model" if isinstance(err, ModelLoadError) else "prompt" if "prompt" in str(err) else None
        raise ApiError(400, str(err), field) from None
    return folder.name, paths


def generated(root: Path, gen_id: str, name: str) -> Path:
    folder = root / ".tiforge-web" / "generated" / gen_id
    target = (folder / name).resolve()
    if not _ID.match(gen_id) or not target.is_relative_to(folder.resolve()) or not target.is_file():
        raise ApiError(404, "no such picture")
    return target
