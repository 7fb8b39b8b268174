"""VAE outputs computed once per image: in memory, or on disk for later runs (kohya's
`cache_latents_to_disk`).

A disk entry's name is a hash of everything its latents depend on: the image file's bytes, the size
it is trained at (resolution or bucket), the crop rule, and the VAE (config, dtype, a weight
checksum). Change any of them and the old entry is simply not found. An entry also keeps the crop
facts and the mask, so a cached epoch decodes no image at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from tiforge.atomic import atomic_write
from tiforge.data.dataset import TextualInversionDataset
from tiforge.data.sources import HFImage
from tiforge.data.images import Crop

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


def entry_key(dataset: TextualInversionDataset, r: int, vae_fp: str) -> str:
    record = dataset.records[r]
    parts = [_content_hash(record.image), str(dataset.targets[r]), "center", vae_fp]
    if dataset.use_masks and record.mask is not None:
        parts.append(_content_hash(record.mask))
    parts.append(f"masks={dataset.use_masks}")  # with masks on, an entry also holds the mask
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
                      disk_dir: str | Path | None = None) -> dict[str, int]:
    """Encode every record once (deterministic: caching needs center crops and no random flips);
    keep the latent distribution (mean and log-variance) so each step still samples fresh latents.
    Returns how many entries were encoded and how many were read back from disk."""
    folder = Path(disk_dir).expanduser() if disk_dir is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    vae_fp = vae_fingerprint(vae) if folder is not None else ""
    params, crops, masks = [], [], []
    stats = {"encoded": 0, "from_disk": 0}
    indices = range(len(dataset.records))
    for r in progress(indices) if progress else indices:
        path = folder / f"{entry_key(dataset, r, vae_fp)}.safetensors" if folder is not None else None
        if path is not None and path.is_file():
            try:
                p, crop, mask = _read(path)
                params.append(p), crops.append(crop), masks.append(mask)
                stats["from_disk"] += 1
                continue
            except Exception as err:  # a damaged entry is recomputed, never trusted
                log.warning("latent cache entry %s unreadable (%s); encoding again", path.name, err)
        pixels, crop, mask = dataset.image_tensors(r)
        dist = vae.encode(pixels.unsqueeze(0).to(device, dtype)).latent_dist
        p = dist.parameters[0].to("cpu", torch.float32)
        if path is not None:
            _write(path, p, crop, mask)
        params.append(p), crops.append(crop), masks.append(mask)
        stats["encoded"] += 1
    dataset.latent_params, dataset.latent_crops, dataset.latent_masks = params, crops, masks
    if folder is not None:
        log.info("latent cache %s: %d encoded, %d reused", folder, stats["encoded"], stats["from_disk"])
    return stats


def check_cacheable(config, records) -> None:
    """Cached latents are only exact when every augmentation is fixed. kohya sets augmentations per
    subset, so this is only known once the data is read."""
    from tiforge.data.sources import DatasetError

    if not config.cache_vae_outputs:
        return
    random = sorted({str(getattr(r.image, "parent", r.name)) for r in records
                     if r.options.flip or r.options.random_crop or r.options.color_aug})
    if random:
        raise DatasetError(
            "cache_vae_outputs: cannot cache VAE outputs of images with a random augmentation (flip_aug, random_crop "
            f"or color_aug) in {', '.join(random[:5])}; every epoch would need new latents. Turn them off there "
            "or set cache_vae_outputs: false"
        )
