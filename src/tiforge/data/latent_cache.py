"""VAE outputs computed once per image: in memory, or on disk for later runs (kohya's
`cache_latents_to_disk`).

A disk entry's name is a hash of everything its latents depend on: the image file's bytes, the size
it is trained at (resolution or bucket), the crop rule, the flip variant, and the VAE (config, dtype,
a weight checksum). Change any of them and the old entry is simply not found. An entry also keeps the crop
facts and the mask, so a cached epoch decodes no image at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from tiforge.atomic import atomic_write
from tiforge.data.dataset import TextualInversionDataset
from tiforge.data.sources import HFImage
from tiforge.data.images import Crop
from tiforge.hardware import fast_half_convolutions

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    from tiforge.model.clip_tokenizer import cache_dir

    return cache_dir() / "latents"


def vae_fingerprint(vae) -> str:
    h = hashlib.sha256(json.dumps(dict(vae.config), sort_keys=True, default=str).encode())
    h.update(str(vae.dtype).encode())
    params = list(vae.parameters())
    for p in params[:2] + params[-2:]:
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _content_hash(source) -> str:
    if isinstance(source, HFImage):
        fingerprint = getattr(source.dataset, "_fingerprint", "")
        return hashlib.sha256(f"{fingerprint}/{source.row}/{source.column}".encode()).hexdigest()
    h = hashlib.sha256()
    with open(source, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def entry_key(dataset: TextualInversionDataset, r: int, vae_fp: str, flipped: bool = False) -> str:
    record = dataset.records[r]
    parts = [_content_hash(record.image), str(dataset.targets[r]), "center", vae_fp]
    if dataset.use_masks and record.mask is not None:
        parts.append(_content_hash(record.mask))
    parts.append(f"masks={dataset.use_masks}")  # with masks on, an entry also holds the mask
    if flipped:  # the mirrored variant; the unflipped key is unchanged, so older caches stay valid
        parts.append("flipped")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _read(path: Path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        params = f.get_tensor("params")
        mask = f.get_tensor("mask") if "mask" in f.keys() else None
    top, left, h, w = (int(v) for v in meta["crop"].split(","))
    return params, Crop(top, left, (h, w)), mask


def _write(path: Path, params: torch.Tensor, crop: Crop, mask: torch.Tensor | None) -> None:
    from safetensors.torch import save_file

    tensors = {"params": params.contiguous()}
    if mask is not None:
        tensors["mask"] = mask.contiguous()
    meta = {"crop": f"{crop.top},{crop.left},{crop.original_size[0]},{crop.original_size[1]}"}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


@torch.no_grad()
def cache_vae_outputs(dataset: TextualInversionDataset, vae, device, dtype, progress=None,
                      disk_dir: str | Path | None = None, batch_size: int = 1) -> dict[str, int]:
    """Encode every record once per variant it can take: as is, and mirrored where it flips at random
    (kohya's flip_aug cache). Each step then picks the variant its generator chose, so a cached run sees
    the same pictures as one that encodes every step. The latent distribution (mean and log-variance)
    is kept, so each step still samples fresh latents. Pictures of one size are encoded `batch_size` at
    a time. Returns how many entries were encoded and how many were read back from disk."""
    folder = Path(disk_dir).expanduser() if disk_dir is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    dtype = encoding_dtype(dtype, device)
    if dtype != vae.dtype:  # only the half that encodes; it is freed once caching ends
        log.info("encoding latents in %s: this CPU has no fast %s convolutions", dtype, vae.dtype)
        vae.encoder.to(dtype=dtype), vae.quant_conv.to(dtype=dtype)
    vae_fp = vae_fingerprint(vae) if folder is not None else ""
    jobs = [(r, flipped) for r, record in enumerate(dataset.records) for flipped in flip_variants(record)]
    done: dict[tuple[int, bool], tuple] = {}
    stats = {"encoded": 0, "from_disk": 0}
    todo: dict[tuple[int, int], list] = {}  # pictures to encode, by size
    for job in progress(jobs) if progress else jobs:
        path = folder / f"{entry_key(dataset, job[0], vae_fp, flipped=job[1])}.safetensors" if folder is not None else None
        entry = _read_entry(path)
        if entry is not None:
            done[job] = entry
            stats["from_disk"] += 1
            continue
        pixels, crop, mask = dataset.image_tensors(job[0], flip=job[1])
        group = todo.setdefault(dataset.targets[job[0]], [])
        group.append((job, path, pixels, crop, mask))
        if len(group) >= batch_size:
            stats["encoded"] += _encode(todo.pop(dataset.targets[job[0]]), vae, device, dtype, done)
    for group in todo.values():
        stats["encoded"] += _encode(group, vae, device, dtype, done)
    dataset.latent_params, dataset.latent_crops, dataset.latent_masks = [], [], []
    for r, record in enumerate(dataset.records):
        variants = [done[(r, flipped)] for flipped in flip_variants(record)]
        dataset.latent_params.append([v[0] for v in variants])
        dataset.latent_crops.append([v[1] for v in variants])
        dataset.latent_masks.append([v[2] for v in variants])
    if folder is not None:
        log.info("latent cache %s: %d encoded, %d reused", folder, stats["encoded"], stats["from_disk"])
    return stats


def flip_variants(record) -> tuple[bool, ...]:
    """The variants cached for a record: as is, and mirrored where it flips at random."""
    return (False, True) if record.options.flip else (False,)


def _read_entry(path: Path | None):
    if path is None or not path.is_file():
        return None
    try:
        return _read(path)
    except Exception as err:  # a damaged entry is recomputed, never trusted
        log.warning("latent cache entry %s unreadable (%s); encoding again", path.name, err)
        return None


def _encode(group: list, vae, device, dtype, done: dict) -> int:
    pixels = torch.stack([g[2] for g in group]).to(device, dtype)
    params = vae.encode(pixels).latent_dist.parameters.to("cpu", torch.float32)
    for (job, path, _, crop, mask), p in zip(group, params):
        p = p.clone()  # its own storage: a view would keep the whole batch alive
        if path is not None:
            _write(path, p, crop, mask)
        done[job] = (p, crop, mask)
    return len(group)


def encoding_dtype(dtype: torch.dtype, device) -> torch.dtype:
    """Without those kernels PyTorch runs its slow reference convolution: on an AVX2 CPU a bf16 VAE
    encodes about 40x slower than a float32 one, so caching (start-up) encodes in float32 there."""
    if torch.device(device).type != "cpu" or dtype == torch.float32 or fast_half_convolutions(dtype):
        return dtype
    return torch.float32


@dataclass(frozen=True)
class CachePlan:
    """Whether latents are cached, and the line that tells the user why (or why not)."""

    cache: bool
    reason: str


def plan_caching(config, records) -> CachePlan:
    """Cached latents are exact when every augmentation is fixed or a random flip (both mirror images are
    encoded). `cache_vae_outputs: null` caches exactly then; true insists (and refuses a random crop or
    colour augmentation); false never caches. kohya sets augmentations per subset, so this is only known
    once the data is read."""
    from tiforge.data.sources import DatasetError

    squash = config.data_loader.squash  # squashing crops nothing, so center_crop: false draws nothing
    rules = {"random_crop": lambda r: r.options.random_crop and not squash, "color_aug": lambda r: r.options.color_aug}
    found_in = {name: list(dict.fromkeys(str(getattr(r.image, "parent", r.name)) for r in records if on(r)))
               for name, on in rules.items()}
    inexact = {name: found for name, found in found_in.items() if found}
    why = "; ".join(f"{name} in {', '.join(folders[:3])}" for name, folders in inexact.items())
    if config.cache_vae_outputs is False:
        return CachePlan(False, "not cached: cache_vae_outputs: false (every picture goes through the VAE each step)")
    if inexact and config.cache_vae_outputs:
        raise DatasetError(
            f"cache_vae_outputs: cannot cache VAE outputs exactly with a random augmentation ({why}); every "
            "epoch would need new latents. Turn it off there or set cache_vae_outputs: false (or leave it unset "
            "to cache only when exact)"
        )
    if inexact:
        return CachePlan(False, f"not cached: {why} (a random crop or colour change needs the VAE every step)")
    flipping = sum(1 for r in records if r.options.flip)
    if flipping == len(records):
        shape = f"{len(records)} pictures x 2 flip variants"
    elif flipping:
        shape = f"{len(records)} pictures, {flipping} of them x 2 flip variants"
    else:
        shape = f"{len(records)} pictures"
    return CachePlan(True, f"caching latents: {shape} (exact: the same as encoding each step)")


def release_vae(parts, keep_decoder: bool) -> None:
    """After caching, training never encodes again: drop the encoder half (and quant_conv) at once, and
    the whole VAE when nothing decodes (no validation or sample prompts). The decoder is parked off an
    accelerator; on a CPU, moving it would free nothing."""
    import gc

    vae = parts.vae
    if vae is None:
        return
    if not keep_decoder:
        parts.vae = None
    else:
        vae.encoder = None
        vae.quant_conv = None
        if next(vae.parameters()).device.type != "cpu":
            vae.to("cpu")
    del vae
    gc.collect()
