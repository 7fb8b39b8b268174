"""Textual-inversion embedding files in every layout the popular tools write and read.

| format    | layout                                                        | containers            |
|-----------|---------------------------------------------------------------|-----------------------|
| diffusers | `{token: tensor[n, dim]}` (diffusers example, InvokeAI)      | .safetensors .bin .pt |
| a1111     | `string_to_token`, `string_to_param`, `name`, `step`, ...     | .pt .bin, .png .webp  |
| kohya     | `emb_params: [n, dim]`; SDXL `clip_l` + `clip_g`              | .safetensors .pt .ckpt|

(see shared/reference/embedding-formats.md). Pickled containers are untrusted input: they are read
with `weights_only=True`, never executed. Every write goes to a temporary file and is renamed.

Vectors are numpy arrays here (embeddings/arrays.py), so safetensors files and pictures are read and
written without torch; only the pickled containers import it, inside their reader and writer.
`Embedding.vectors` / `.single` hand torch tensors to the training side.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tiforge import __version__
from tiforge.atomic import atomic_write
from tiforge.embeddings.arrays import SAFETENSORS_DTYPES, as_array, finite, numpy_dtype, tensors_to_arrays, to_torch
from tiforge.embeddings.pickle_writer import save_plain_torch_zip

if TYPE_CHECKING:
    import torch

log = logging.getLogger("tiforge")

FORMATS = ("diffusers", "a1111", "kohya")
PRECISIONS = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16",
              "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
SDXL_KEYS = ("clip_l", "clip_g")
PICKLE_SUFFIXES = (".bin", ".pt", ".ckpt", ".pth")
PICTURE_SUFFIXES = (".png", ".webp")
_PNG_KEY = "sd-ti-embedding"  # the tEXt chunk A1111 hides an embedding in


class EmbeddingFileError(ValueError):
    """An embedding file that cannot be used; the message names the file."""


@dataclass
class Embedding:
    """Vectors of one concept: `{token: [n, dim]}` for SD 1.x/2.x, `{"clip_l", "clip_g"}` for SDXL."""

    arrays: dict[str, np.ndarray]  # as stored in the file, dtype included
    token: str | None = None  # the trigger stored in the file, where the layout has one
    format: str = "diffusers"
    metadata: dict[str, str] = field(default_factory=dict)
    step: int | None = None

    @property
    def is_sdxl(self) -> bool:
        return set(self.arrays) == set(SDXL_KEYS)

    @property
    def single_array(self) -> np.ndarray:
        if len(self.arrays) != 1:
            raise EmbeddingFileError(f"expected one tensor, found {sorted(self.arrays)}")
        return next(iter(self.arrays.values()))

    @property
    def vectors(self) -> dict[str, torch.Tensor]:
        """The arrays as torch tensors (imports torch), for training and the pipelines."""
        return {k: to_torch(a) for k, a in self.arrays.items()}

    @property
    def single(self) -> torch.Tensor:
        """The one torch tensor of an SD 1.x/2.x embedding."""
        return to_torch(self.single_array)

    @property
    def num_vectors(self) -> int:
        return next(iter(self.arrays.values())).shape[0]

    def trigger(self, path: Path) -> str:
        """What a prompt uses: the diffusers layout's key, or, as A1111 and kohya do, the file name."""
        return self.token if self.format == "diffusers" and self.token else path.stem


def _torch_reason(err: Exception) -> str:
    """The telling line of torch.load's error: for a refused pickle, what it wanted to run (torch's
    message around it is a page of advice meant for trusted files)."""
    text = str(err)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return first.split(". ")[0].rstrip(".")[:200]


def _as_2d(t, where: str) -> np.ndarray:
    if not isinstance(t, np.ndarray):
        raise EmbeddingFileError(f"{where}: expected a tensor, found {type(t).__name__}")
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise EmbeddingFileError(f"{where}: expected vectors shaped [n, dim], found {list(t.shape)}")
    if not finite(t):
        raise EmbeddingFileError(f"{where}: holds NaN or infinite values")
    return t


# ------------------------------------------------------------------------------------- reading


def _read_safetensors(path: Path) -> tuple[dict, dict[str, str]]:
    # safetensors' numpy reader knows no bfloat16, so the tensors come from its raw `deserialize`
    # and get their dtype here; safe_open checks the header first and gives the metadata.
    from safetensors import deserialize, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = dict(f.metadata() or {})
        views = deserialize(path.read_bytes())
    except Exception as err:  # safetensors raises its own error types for truncated headers
        raise EmbeddingFileError(f"{path}: not a readable safetensors file ({err})") from None
    tensors = {}
    for name, view in views:
        if view["dtype"] not in SAFETENSORS_DTYPES:
            raise EmbeddingFileError(f"{path}: tensor {name!r} holds {view['dtype']} values, which tiforge does not read")
        dtype = numpy_dtype(SAFETENSORS_DTYPES[view["dtype"]])
        tensors[name] = np.frombuffer(view["data"], dtype=dtype).reshape(view["shape"])
    return tensors, meta


def _read_pickle(path: Path) -> dict:
    import torch  # the one container that needs it; safetensors and pictures are read without

    try:
        # Pickles from the internet are untrusted: weights_only refuses anything but tensors and
        # plain containers instead of running code hidden in the file.
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise EmbeddingFileError(
            f"{path}: refused or unreadable as a torch file; tiforge only loads plain tensors "
            f"(weights_only=True) and never runs code from a pickle ({type(err).__name__}: {_torch_reason(err)})"
        ) from None
    if not isinstance(data, dict):
        raise EmbeddingFileError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
    try:
        return tensors_to_arrays(data)
    except ValueError as err:
        raise EmbeddingFileError(f"{path}: {err}") from None


class _TensorJSON(json.JSONEncoder):
    def default(self, o):
        if isinstance(o, np.ndarray):  # A1111's JSON form of a tensor
            return {"TORCHTENSOR": o.astype(np.float32).tolist()}
        return super().default(o)


def _tensor_hook(d: dict):
    return np.array(d["TORCHTENSOR"], dtype=np.float32) if "TORCHTENSOR" in d else d


def _read_picture(path: Path) -> dict:
    from PIL import Image

    try:
        with Image.open(path) as im:
            text = im.info.get(_PNG_KEY) or getattr(im, "text", {}).get(_PNG_KEY)
    except Exception as err:
        raise EmbeddingFileError(f"{path}: not a readable picture ({err})") from None
    if not text:
        raise EmbeddingFileError(
            f"{path}: this picture holds no '{_PNG_KEY}' text chunk, so it carries no embedding "
            "(embeddings hidden only in the pixels are not supported)"
        )
    try:
        return json.loads(base64.b64decode(text), object_hook=_tensor_hook)
    except Exception as err:
        raise EmbeddingFileError(f"{path}: the '{_PNG_KEY}' chunk is not a valid embedding ({err})") from None


def load_embedding(path: str | Path) -> Embedding:
    path = Path(path)
    if not path.is_file():
        raise EmbeddingFileError(f"{path}: embedding file not found")
    suffix = path.suffix.lower()
    meta: dict[str, str] = {}
    if suffix == ".safetensors":
        data, meta = _read_safetensors(path)
    elif suffix in PICTURE_SUFFIXES:
        data = _read_picture(path)
    else:
        data = _read_pickle(path)
    where = str(path)
    meta_token = meta.get("tiforge.placeholder")
    meta_step = int(meta["tiforge.steps"]) if meta.get("tiforge.steps", "").isdigit() else None
    if "string_to_param" in data:  # A1111 and the original paper code
        params = data["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise EmbeddingFileError(
                f"{where}: string_to_param holds {len(params) if isinstance(params, dict) else '?'} entries; "
                "A1111 and tiforge expect exactly one"
            )
        tensor = _as_2d(next(iter(params.values())), where)
        name = data.get("name") if isinstance(data.get("name"), str) else None
        step = data.get("step") if isinstance(data.get("step"), int) else None
        token = name or path.stem
        return Embedding({token: tensor}, token=name, format="a1111", metadata=meta, step=step)
    if "emb_params" in data:  # kohya-ss sd-scripts, invoke-training
        token = meta_token or path.stem
        return Embedding({token: _as_2d(data["emb_params"], where)}, token=meta_token, format="kohya", metadata=meta,
                         step=meta_step)
    if any(k in data for k in SDXL_KEYS):
        missing = [k for k in SDXL_KEYS if k not in data]
        if missing:
            raise EmbeddingFileError(f"{where}: an SDXL embedding needs both clip_l and clip_g; {missing[0]} is missing")
        vectors = {k: _as_2d(data[k], f"{where} [{k}]") for k in SDXL_KEYS}
        if vectors["clip_l"].shape[0] != vectors["clip_g"].shape[0]:
            raise EmbeddingFileError(f"{where}: clip_l and clip_g hold different vector counts")
        return Embedding(vectors, token=meta_token, format="kohya", metadata=meta, step=meta_step)
    tensors = {k: v for k, v in data.items() if isinstance(v, np.ndarray)}
    if len(tensors) == 1 and len(data) == 1:  # diffusers {token: tensor}
        token, tensor = next(iter(tensors.items()))
        return Embedding({str(token): _as_2d(tensor, where)}, token=str(token), format="diffusers", metadata=meta,
                         step=meta_step)
    raise EmbeddingFileError(
        f"{where}: unknown embedding layout with keys {sorted(map(str, data))[:8]}; expected "
        "{token: tensor} (diffusers), string_to_param (A1111), emb_params (kohya) or clip_l + clip_g (SDXL)"
    )


# ------------------------------------------------------------------------------------- writing


def _layout(emb: Embedding, fmt: str, token: str, where: Path) -> dict:
    if fmt == "kohya":
        return dict(emb.arrays) if emb.is_sdxl else {"emb_params": emb.single_array}
    if emb.is_sdxl:
        raise EmbeddingFileError(
            f"{where}: an SDXL embedding (clip_l + clip_g) is written in the kohya layout, which kohya, A1111, "
            "ComfyUI and InvokeAI read; use --to kohya"
        )
    if fmt == "diffusers":
        # One vector is stored 1-D, as the sd-concepts-library files are: InvokeAI's probe reads the
        # width of a {token: tensor} file from shape[0], so a [1, W] file would not install there.
        return {token: emb.single_array[0].copy() if emb.num_vectors == 1 else emb.single_array}
    if fmt == "a1111":
        return {
            "string_to_token": {"*": 265},  # A1111 stores the id of '*', a leftover of the paper's code
            "string_to_param": {"*": emb.single_array},
            "name": token,
            "step": emb.step or 0,
            "sd_checkpoint": emb.metadata.get("tiforge.base_model_hash"),
            "sd_checkpoint_name": emb.metadata.get("tiforge.base_model"),
        }
    raise EmbeddingFileError(f"unknown embedding format {fmt!r}; choose one of {', '.join(FORMATS)}")


def save_embedding(
    path: str | Path,
    token: str,
    vectors: np.ndarray | torch.Tensor | dict[str, np.ndarray | torch.Tensor],
    metadata: dict[str, str] | None = None,
    *,
    format: str = "diffusers",
    precision: str | None = None,
    step: int | None = None,
    warn_layout: bool = True,
) -> Path:
    """Write one concept's vectors in `format`; the container follows the file extension.
    `vectors`: one [n, dim] array or tensor, or SDXL's {"clip_l", "clip_g"} of them.
    `warn_layout`: say when a tool cannot load this layout (once per run: the final file)."""
    path = Path(path)
    named = vectors if isinstance(vectors, dict) else {token: vectors}
    dtype = numpy_dtype(PRECISIONS[precision]) if precision else None
    clean = {}
    for key, t in named.items():
        t = as_array(t)
        if not isinstance(t, np.ndarray):
            raise EmbeddingFileError(f"{path}: expected vectors as an array or tensor, found {type(t).__name__}")
        if not finite(t):
            raise EmbeddingFileError(f"{path}: refusing to save non-finite vectors for {token!r}")
        if dtype is not None:
            with np.errstate(over="ignore"):  # a value beyond float16's range becomes inf: refused next
                t = t.astype(dtype)
        clean[key] = np.ascontiguousarray(_as_2d(t, str(path)))
    first = next(iter(clean.values()))
    meta = {
        "tiforge.version": __version__,
        "tiforge.placeholder": token,
        "tiforge.num_vectors": str(first.shape[0]),
        "tiforge.dim": "+".join(str(t.shape[1]) for t in clean.values()),
        **({"tiforge.steps": str(step)} if step is not None else {}),
        **{k: str(v) for k, v in (metadata or {}).items() if v is not None},
    }
    emb = Embedding(clean, token=token, metadata=meta, step=step)
    layout = _layout(emb, format, token, path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        if format == "a1111":
            raise EmbeddingFileError(
                f"{path}: the A1111 layout (string_to_param) needs a .pt file; safetensors cannot hold it. "
                "Use a .pt name, or --to diffusers/kohya for safetensors"
            )
        from safetensors.numpy import save_file

        if warn_layout:
            _warn_if_invokeai_refuses(path, format, emb)
        return atomic_write(path, lambda tmp: save_file(layout, str(tmp), metadata=meta))
    if suffix in PICKLE_SUFFIXES:
        if warn_layout:
            _warn_if_invokeai_refuses(path, format, emb)
        return atomic_write(path, lambda tmp: save_plain_torch_zip(layout, tmp))
    if suffix == ".png":
        return atomic_write(path, lambda tmp: _write_picture(tmp, emb, token))
    raise EmbeddingFileError(
        f"{path}: unknown extension {path.suffix!r}; use .safetensors, .bin, .pt, .ckpt or (A1111 picture) .png"
    )


def _warn_if_invokeai_refuses(path: Path, fmt: str, emb: Embedding) -> None:
    """Several vectors under one token in the diffusers layout are [n, W], which InvokeAI's probe
    reads as width n and refuses."""
    if fmt != "diffusers" or emb.is_sdxl or emb.num_vectors == 1:
        return
    log.warning(
        "%s: %d vectors in the diffusers layout load in diffusers, A1111, ComfyUI and kohya, but not in InvokeAI "
        "(its probe reads the width from the first axis); for InvokeAI write the kohya or a1111 layout "
        "(save_format: kohya, or `tiforge convert %s out.safetensors --to kohya`)",
        path, emb.num_vectors, path.name,
    )


def _write_picture(tmp: Path, emb: Embedding, token: str) -> None:
    """An A1111-readable picture: the embedding as base64 JSON in the 'sd-ti-embedding' tEXt chunk,
    on a small image showing the vectors, so that the file is still a picture people can share."""
    from PIL import Image, PngImagePlugin

    data = _layout(emb, "a1111", token, tmp)
    payload = base64.b64encode(json.dumps(data, cls=_TensorJSON).encode()).decode()
    v = emb.single_array.astype(np.float32)
    # float32 throughout, and truncation to bytes: the pixels torch's float32 arithmetic gave
    shade = ((v - v.min()) / (v.max() - v.min() + np.float32(1e-8)) * np.float32(255)).astype(np.uint8)
    image = Image.fromarray(np.kron(shade, np.ones((16, 1), np.uint8))).convert("RGB")
    info = PngImagePlugin.PngInfo()
    info.add_text(_PNG_KEY, payload)
    image.save(tmp, format="PNG", pnginfo=info)
