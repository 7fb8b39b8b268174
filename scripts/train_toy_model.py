"""Pretrains the toy Stable-Diffusion-architecture models on the toy world (tiforge.toy.world).

    .venv/bin/python scripts/train_toy_model.py                 # SD twin, about 40 minutes on a 2-core CPU
    .venv/bin/python scripts/train_toy_model.py --family sdxl   # SDXL twin, from the SD twin's VAE and text encoder
    .venv/bin/python scripts/train_toy_model.py --fine-tune --noise-offset 0.1 --steps 2000 --lr 3e-4 --out DIR
        # go on from the shipped SD twin with offset noise (39 min); see the README's quality section

Writes src/tiforge/assets/toy_model/ (fp16 weights, configs, report.json). The pictures are 32x32;
the VAE downsamples by 2 (latents 4x16x16); the UNet has cross-attention at 8x8 and 4x4; the text
encoder is a 2-layer CLIP with the real CLIP tokenizer. Two combinations of known things never
appear - purple stars and light checkered backgrounds (see tiforge.toy.world) - so textual inversion
has something to learn.
Deterministic for a given seed and thread count.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tiforge.model.clip_tokenizer import load_clip_tokenizer
from tiforge.model.noise import offset_noise
from tiforge.model.text_conditioning import PromptEncoder, unet_conditioning
from tiforge.toy.model import (
    FAMILIES,
    build_toy_components,
    build_toy_sdxl_components,
    evaluate_prompts,
    save_toy_model,
    shipped_weights,
)
from tiforge.toy.world import SIZE, caption, render, sample_scene

ASSETS = Path(__file__).resolve().parents[1] / "src" / "tiforge" / "assets"


def shipped_sd_part(name: str):
    """One part of the shipped SD twin, in float32 (it is stored in fp16)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    cls = {"vae": AutoencoderKL, "unet": UNet2DConditionModel, "text_encoder": CLIPTextModel}[name]
    return cls.from_pretrained(shipped_weights("sd"), subfolder=name, torch_dtype=torch.float32)


def make_data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(n)]
    images = np.stack([np.asarray(render(s)) for s in scenes])
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # uint8 N,3,H,W
    return scenes, pixels


def to_float(pixels_u8: torch.Tensor) -> torch.Tensor:
    return pixels_u8.float() / 127.5 - 1.0


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_vae(vae, pixels, steps: int, batch: int, log) -> None:
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(1)
    vae.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, 2e-3, 50)
        x = to_float(pixels[torch.randint(len(pixels), (batch,), generator=gen)])
        dist = vae.encode(x).latent_dist
        rec = vae.decode(dist.sample(generator=gen)).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-6 * dist.kl().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} loss {loss.item():.4f}")
    vae.eval()


@torch.no_grad()
def encode_all(vae, pixels, batch=512) -> torch.Tensor:
    return torch.cat([vae.encode(to_float(pixels[i : i + batch])).latent_dist.mean for i in range(0, len(pixels), batch)])


@torch.no_grad()
def reconstruction_check(vae, scenes, pixels, n=300) -> dict:
    """The judge on VAE reconstructions: a VAE that loses shape or texture caps everything after it."""
    from PIL import Image

    from tiforge.toy.world import judge

    rec = vae.decode(vae.encode(to_float(pixels[-n:])).latent_dist.mean).sample
    rec = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    verdicts = [judge(Image.fromarray(r)) for r in rec]
    truth = scenes[-n:]
    return {k: round(sum(getattr(v, k) == getattr(s, k) for v, s in zip(verdicts, truth)) / n, 3)
            for k in ("shape", "colour", "background")}


def train_denoiser(unet, prompt_encoder: PromptEncoder, scheduler, latents, scenes, steps, batch, lr, log,
                   noise_offset: float = 0.0):
    params = list(unet.parameters()) + list(prompt_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    ema = [p.detach().clone() for p in params]
    rng = np.random.default_rng(2)
    gen = torch.Generator().manual_seed(3)
    unet.train()
    prompt_encoder.train()
    started = time.time()
    # every toy picture is a whole, uncropped SIZE x SIZE image (what SDXL's size/crop ids describe)
    sizes = {"original_size": torch.tensor([[SIZE, SIZE]] * batch), "crop_top_left": torch.zeros(batch, 2, dtype=torch.long),
             "target_size": torch.tensor([[SIZE, SIZE]] * batch)}
    for step in range(steps):
        decay = min(0.999, (1 + step) / (10 + step))
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, lr, 200)
        idx = torch.randint(len(latents), (batch,), generator=gen)
        # 10% empty captions teach the unconditional prediction that classifier-free guidance needs
        caps = ["" if rng.random() < 0.1 else caption(scenes[i], rng) for i in idx.tolist()]
        hidden, extra = unet_conditioning(prompt_encoder, prompt_encoder.tokenize(caps), sizes)
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        if noise_offset:
            # A picture's overall brightness lives in each latent channel's mean, which the noise
            # schedule never fully destroys: without offset noise the sampler's starting noise, not the
            # prompt, decides "dark" vs "grey" (arXiv:2305.08891 explains the cause).
            noise = offset_noise(noise, x0, noise_offset, None, torch.randn(batch, x0.shape[1], 1, 1, generator=gen))
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=gen)
        pred = unet(scheduler.add_noise(x0, noise, t), t, hidden, **extra).sample
        loss = F.mse_loss(pred, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p, 1 - decay)
        if step % 100 == 0 or step == steps - 1:
            rate = (step + 1) / (time.time() - started)
            log(f"denoiser step {step}/{steps} loss {loss.item():.4f} ({rate:.2f} steps/s)")
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    unet.eval()
    prompt_encoder.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(FAMILIES), default="sd")
    parser.add_argument("--out", type=Path, default=None, help="default: src/tiforge/assets/<the family's folder>")
    parser.add_argument("--images", type=int, default=40000)
    parser.add_argument("--vae-steps", type=int, default=1200)
    parser.add_argument("--vae-batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise-offset", type=float, default=0.0,
                        help="offset noise strength (0.1 lets prompts set the overall brightness)")
    parser.add_argument("--fine-tune", action="store_true",
                        help="SD only: go on from the shipped SD twin (its VAE kept as it is) instead of from scratch")
    args = parser.parse_args()
    if args.fine_tune and args.family != "sd":
        parser.error("--fine-tune: only the SD twin (the SDXL twin is trained from its VAE and text encoder)")
    args.out = args.out or ASSETS / FAMILIES[args.family]
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)  # results depend on the thread count; keep it fixed
    log_lines: list[str] = []

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        log_lines.append(line)

    t0 = time.time()
    scenes, pixels = make_data(args.images, args.seed)
    log(f"{len(scenes)} scenes rendered at {SIZE}x{SIZE}")
    vae, unet, text_encoder, scheduler = build_toy_components(seed=args.seed)
    text_encoder_2 = None
    if args.family == "sdxl":
        # The twin shares the SD twin's trained VAE (same pictures, same latents) and starts both of
        # its text encoders from the SD twin's; its UNet learns SDXL's conditioning from scratch.
        vae, unet, text_encoder, text_encoder_2 = build_toy_sdxl_components(
            shipped_sd_part("vae"), shipped_sd_part("text_encoder"), seed=args.seed)
        vae.eval()
        latents = encode_all(vae, pixels) * vae.config.scaling_factor
        encoders = [("clip_l", load_clip_tokenizer(), text_encoder),
                    ("clip_g", load_clip_tokenizer(pad_token="!"), text_encoder_2)]
        prompt_encoder = PromptEncoder(encoders, sdxl=True)
    elif args.fine_tune:
        previous = json.loads((shipped_weights("sd") / "report.json").read_text())
        vae, unet, text_encoder = (shipped_sd_part(name) for name in ("vae", "unet", "text_encoder"))
        vae.eval()
        latents = encode_all(vae, pixels) * vae.config.scaling_factor
        prompt_encoder = PromptEncoder([("text_encoder", load_clip_tokenizer(), text_encoder)], sdxl=False)
    else:
        train_vae(vae, pixels, args.vae_steps, args.vae_batch, log)
        log(f"vae reconstructions judged: {json.dumps(reconstruction_check(vae, scenes, pixels))}")
        latents = encode_all(vae, pixels)
        scaling = float(1.0 / latents.std())
        vae.register_to_config(scaling_factor=scaling)
        latents = latents * scaling
        prompt_encoder = PromptEncoder([("text_encoder", load_clip_tokenizer(), text_encoder)], sdxl=False)
    log(f"latents {tuple(latents.shape)}, scaling_factor {vae.config.scaling_factor:.4f}")
    train_denoiser(unet, prompt_encoder, scheduler, latents, scenes, args.steps, args.batch, args.lr, log,
                   noise_offset=args.noise_offset)
    minutes = (time.time() - t0) / 60
    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_toy_model(tmp, vae, unet, text_encoder, scheduler, text_encoder_2)
    report = {
        "family": args.family, "seed": args.seed, "images": args.images,
        "vae_steps": args.vae_steps if args.family == "sd" else "none: the SD twin's trained VAE", "steps": args.steps,
        "batch": args.batch, "lr": args.lr, "noise_offset": args.noise_offset, "train_minutes": round(minutes, 1),
        "evaluation": evaluate_prompts(tmp),
    }
    if args.fine_tune:
        report["vae_steps"] = "none: the VAE it went on from"
        report["fine_tuned_from"] = previous
    (tmp / "report.json").write_text(json.dumps(report, indent=2))
    (tmp / "train.log").write_text("\n".join(log_lines) + "\n")
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.rename(args.out)
    log(f"saved {args.out} after {minutes:.1f} min: {json.dumps(report['evaluation'])}")


if __name__ == "__main__":
    main()
