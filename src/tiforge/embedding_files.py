"""Reading and writing textual-inversion embedding files.

tiforge writes the diffusers layout (`{token: tensor[n, dim]}` in safetensors), which diffusers'
`load_textual_inversion`, InvokeAI, A1111 and ComfyUI all read. For reading, it accepts the layouts
the other trainers write (see shared/reference/embedding-formats.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__
from .atomic import atomic_write


class EmbeddingFileError(ValueError):
    """An embedding file that cannot be used; the message names the file."""


@dataclass
class Embedding:
    vectors: dict[str, torch.Tensor]  # key: token name, or "clip_l"/"clip_g" for SDXL files
    token: str | None = None  # the trigger word stored in the file, where the layout has one
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def single(self) -> torch.Tensor:
        if len(self.vectors) != 1:
            raise EmbeddingFileError(f"expected one tensor, found {sorted(self.vectors)}")
        return next(iter(self.vectors.values()))


def _as_2d(t: torch.Tensor, where: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise EmbeddingFileError(f"{where}: expected a tensor, found {type(t).__name__}")
    if t.ndim == 1:
        t = t.unsqueeze(0)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise EmbeddingFileError(f"{where}: expected vectors shaped [n, dim], found {list(t.shape)}")
    if not torch.isfinite(t.float()).all():
        raise EmbeddingFileError(f"{where}: holds NaN or infinite values")
    return t


def _read_raw(path: Path) -> tuple[dict, dict[str, str]]:
    if not path.is_file():
        raise EmbeddingFileError(f"{path}: embedding file not found")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except Exception as err:  # safetensors raises its own error types for truncated headers
            raise EmbeddingFileError(f"{path}: not a readable safetensors file ({err})") from None
    try:
        # Pickles from the internet are untrusted: weights_only refuses anything but tensors and
        # plain containers instead of running code hidden in the file.
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise EmbeddingFileError(
            f"{path}: refused or unreadable as a torch file; tiforge only loads plain tensors "
            f"(weights_only=True) and never runs code from a pickle ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(data, dict):
        raise EmbeddingFileError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
    return data, {}


def load_embedding(path: str | Path) -> Embedding:
    path = Path(path)
    data, meta = _read_raw(path)
    where = str(path)
    if "string_to_param" in data:  # A1111 and the original paper code
        params = data["string_to_param"]
        if len(params) != 1:
            raise EmbeddingFileError(f"{where}: string_to_param holds {len(params)} entries; expected one")
        tensor = _as_2d(next(iter(params.values())), where)
        name = data.get("name")
        return Embedding({str(name or path.stem): tensor}, token=name if isinstance(name, str) else None)
    if "emb_params" in data:  # kohya-ss sd-scripts, invoke-training
        return Embedding({meta.get("tiforge.placeholder") or path.stem: _as_2d(data["emb_params"], where)},
                         token=meta.get("tiforge.placeholder"), metadata=meta)
    if "clip_l" in data or "clip_g" in data:
        if not ("clip_l" in data and "clip_g" in data):
            raise EmbeddingFileError(f"{where}: an SDXL embedding needs both clip_l and clip_g")
        return Embedding({k: _as_2d(data[k], f"{where} [{k}]") for k in ("clip_l", "clip_g")}, metadata=meta)
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if len(tensors) == 1:  # diffusers {token: tensor}
        token, tensor = next(iter(tensors.items()))
        return Embedding({token: _as_2d(tensor, where)}, token=token, metadata=meta)
    raise EmbeddingFileError(
        f"{where}: unknown embedding layout with keys {sorted(map(str, data))[:8]}; expected "
        "{token: tensor}, string_to_param (A1111), emb_params (kohya) or clip_l/clip_g (SDXL)"
    )


def save_embedding(path: str | Path, token: str, vectors: torch.Tensor, metadata: dict[str, str] | None = None) -> Path:
    """Save `{token: vectors}` as safetensors (the diffusers layout), atomically."""
    from safetensors.torch import save_file

    vectors = vectors.detach().to("cpu", torch.float32).contiguous()
    if not torch.isfinite(vectors).all():
        raise EmbeddingFileError(f"{path}: refusing to save non-finite vectors for {token!r}")
    meta = {
        "tiforge.version": __version__,
        "tiforge.placeholder": token,
        "tiforge.num_vectors": str(vectors.shape[0]),
        "tiforge.dim": str(vectors.shape[1]),
    }
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    return atomic_write(path, lambda tmp: save_file({token: vectors}, str(tmp), metadata=meta))
