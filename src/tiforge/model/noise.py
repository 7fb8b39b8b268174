"""kohya's noise and timestep options: offset noise (with its adaptive and random strengths),
multi-resolution (pyramid) noise, a timestep range, input perturbation, and the zero-terminal-SNR
schedule; and the SD3 trainers' logit-normal timestep sampling. Every random number comes from the
run's seeded `NoiseSource`, so a run with these options is as reproducible and exactly resumable as
one without; with every option off the draws are the very ones tiforge made before they existed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class NoiseSettings:
    noise_offset: float | None = None
    noise_offset_random_strength: bool = False
    adaptive_noise_scale: float | None = None
    multires_noise_iterations: int | None = None
    multires_noise_discount: float = 0.3
    min_timestep: int | None = None
    max_timestep: int | None = None
    ip_noise_gamma: float | None = None
    ip_noise_gamma_random_strength: bool = False
    timestep_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0

    @classmethod
    def of(cls, config) -> "NoiseSettings":
        return cls(**{name: getattr(config, name) for name in cls.__dataclass_fields__})


def offset_noise(noise: torch.Tensor, latents: torch.Tensor, offset: float | torch.Tensor,
                 adaptive_scale: float | None, per_channel: torch.Tensor) -> torch.Tensor:
    """noise + offset x one normal number per sample and channel (`per_channel`, [B, C, 1, 1]); with
    `adaptive_scale`, the offset grows by |each latent channel's mean| x the scale (never below 0)."""
    if adaptive_scale is not None:
        offset = (offset + adaptive_scale * latents.float().mean(dim=(2, 3), keepdim=True).abs()).clamp(min=0.0)
    return noise + offset * per_channel


def pyramid_noise(noise: torch.Tensor, iterations: int, discount: float, source) -> torch.Tensor:
    """Multi-resolution noise: coarser and coarser normal noise (each side shrunk by a random 2..4 times
    more per level, weighted by discount^level) upsampled and added, then scaled back to unit spread
    (over this process's batch, as kohya does on each GPU)."""
    b, c, h, w = noise.shape
    for level in range(iterations):
        r = torch.rand((), generator=source.generator, device=source.generator.device).item() * 2 + 2
        hn, wn = max(1, int(h / r**level)), max(1, int(w / r**level))
        coarse = source.randn((b, c, hn, wn)).to(noise.device, noise.dtype)
        noise = noise + F.interpolate(coarse, size=(h, w), mode="bilinear") * discount**level
        if hn == 1 or wn == 1:
            break
    return noise / noise.std()


def _strength(source, most: float, random: bool) -> float | torch.Tensor:
    # one strength for the whole global batch, as kohya draws one per step
    if not random:
        return most
    return torch.rand((), generator=source.generator, device=source.generator.device).item() * most


def draw_training_noise(source, latents: torch.Tensor, settings: NoiseSettings, num_train_timesteps: int):
    """(noise the loss predicts, noise the latents are noised with, timesteps) for this process's batch."""
    shape = tuple(latents.shape)
    noise = source.randn(shape).to(latents.dtype)
    if settings.noise_offset:
        strength = _strength(source, settings.noise_offset, settings.noise_offset_random_strength)
        per_channel = source.randn((shape[0], shape[1], 1, 1)).to(latents.device)
        noise = offset_noise(noise, latents, strength, settings.adaptive_noise_scale, per_channel).to(latents.dtype)
    if settings.multires_noise_iterations:  # after the offset, as kohya orders them
        noise = pyramid_noise(noise, settings.multires_noise_iterations, settings.multires_noise_discount, source)
    low = settings.min_timestep or 0
    high = num_train_timesteps if settings.max_timestep is None else settings.max_timestep
    timesteps = draw_timesteps(source, shape[0], low, high, settings)
    input_noise = noise
    if settings.ip_noise_gamma:
        strength = _strength(source, settings.ip_noise_gamma, settings.ip_noise_gamma_random_strength)
        input_noise = noise + strength * source.randn(shape).to(latents.device, latents.dtype)
    return noise, input_noise, timesteps


def draw_timesteps(source, batch: int, low: int, high: int, settings: NoiseSettings) -> torch.Tensor:
    """Timesteps in [low, high): uniform, or logit-normal, i.e. low + (high - low) x sigmoid(a normal
    number of mean logit_mean and spread logit_std), which draws mid-schedule timesteps most often
    (the SD3 trainers' default). An empty range gives all `high`, as uniform does (kohya's rule)."""
    if settings.timestep_sampling != "logit_normal" or low >= high:
        return source.timesteps(batch, high, low)
    share = torch.sigmoid(source.randn((batch,)) * settings.logit_std + settings.logit_mean)
    return (low + (share * (high - low)).long()).clamp(max=high - 1)


def rescale_zero_terminal_snr(noise_scheduler) -> None:
    """Shift and scale sqrt(alphas_cumprod) so that the last timestep has zero signal and the first
    keeps its own (arXiv:2305.08891), on the training scheduler only. The SNR that loss weights read
    stays the original schedule's (`all_snr`), as in kohya, which computes it before the rescale."""
    alphas_cumprod = noise_scheduler.alphas_cumprod.double()
    noise_scheduler.all_snr = (alphas_cumprod / (1 - alphas_cumprod)).float()
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    bar = root**2
    alphas = torch.cat([bar[:1], bar[1:] / bar[:-1]])
    noise_scheduler.betas = (1 - alphas).float()
    noise_scheduler.alphas = alphas.float()
    noise_scheduler.alphas_cumprod = bar.float()
