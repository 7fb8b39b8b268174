"""The denoising loss of textual inversion: noise the latents, predict, compare.

Kept free of model loading and data so that it can be tested on its own with fixed noise and
timesteps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class NoiseSource:
    """Noise, timesteps and latent samples drawn for the *global* batch and sliced for this process,
    so that P processes with batch B train like one process with batch P*B, and a run resumed from
    the generator's saved state draws exactly what it would have drawn."""

    def __init__(self, seed: int, device, num_processes: int = 1, rank: int = 0):
        self.generator = torch.Generator(device).manual_seed(seed)
        self.device, self.num_processes, self.rank = device, num_processes, rank

    def _mine(self, full: torch.Tensor, local: int) -> torch.Tensor:
        return full[self.rank * local : (self.rank + 1) * local]

    def randn(self, shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
        full = torch.randn((shape[0] * self.num_processes, *shape[1:]), generator=self.generator, device=self.device,
                           dtype=dtype)
        return self._mine(full, shape[0])

    def timesteps(self, batch: int, num_train_timesteps: int) -> torch.Tensor:
        full = torch.randint(0, num_train_timesteps, (batch * self.num_processes,), generator=self.generator,
                             device=self.device)
        return self._mine(full, batch)

    def state_dict(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state_dict(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def sample_latents(latent_params: torch.Tensor, scaling_factor: float, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Draw latents from a VAE distribution (mean and log-variance stacked on channels)."""
    mean, logvar = latent_params.chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    if noise is None:
        noise = torch.randn_like(mean)
    return (mean + std * noise.to(mean.dtype)) * scaling_factor


def training_target(noise_scheduler, latents, noise, timesteps, prediction_type: str) -> torch.Tensor:
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def snr(noise_scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alphas_cumprod / (1.0 - alphas_cumprod)


def min_snr_weights(noise_scheduler, timesteps: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma (arXiv:2303.09556): per-sample weights that cap the pull of low-noise steps.

    For v-prediction the loss is already scaled by (snr + 1) relative to epsilon, hence the divisor.
    """
    s = snr(noise_scheduler, timesteps)
    capped = torch.clamp(s, max=gamma)
    return capped / (s + 1.0) if prediction_type == "v_prediction" else capped / s.clamp(min=1e-8)


def latent_mask(mask: torch.Tensor, size) -> torch.Tensor:
    """A pixel mask at latent resolution: the share of each latent cell's pixels that train."""
    return F.interpolate(mask.float(), size=tuple(size), mode="area")


def denoising_loss(
    unet,
    noise_scheduler,
    latents: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    *,
    prediction_type: str,
    min_snr_gamma: float | None,
    noise: torch.Tensor | None = None,
    timesteps: torch.Tensor | None = None,
    unet_kwargs: dict | None = None,
    mask: torch.Tensor | None = None,
    sample_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean denoising error per sample (Min-SNR weighted), averaged over the batch. With `mask`
    ([batch, 1, H, W] in pixel space, 1 = train), each sample's error is averaged over its masked
    area only, so what lies outside the mask sends no gradient at all."""
    batch = latents.shape[0]
    if noise is None:
        noise = torch.randn_like(latents)
    if timesteps is None:
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,), device=latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    pred = unet(noisy, timesteps, encoder_hidden_states, return_dict=False, **(unet_kwargs or {}))[0]
    target = training_target(noise_scheduler, latents, noise, timesteps, prediction_type)
    error = F.mse_loss(pred.float(), target.float(), reduction="none")
    if mask is None:
        per_sample = error.mean(dim=list(range(1, pred.ndim)))
    else:
        weights = latent_mask(mask, pred.shape[-2:]).to(error.device)
        per_sample = (error * weights).sum(dim=(1, 2, 3)) / (weights.sum(dim=(1, 2, 3)) * error.shape[1]).clamp(min=1e-6)
    if min_snr_gamma is not None:
        per_sample = per_sample * min_snr_weights(noise_scheduler, timesteps, min_snr_gamma, prediction_type)
    if sample_weights is not None:  # kohya's prior_loss_weight for regularization pictures
        per_sample = per_sample * sample_weights.to(per_sample.device, per_sample.dtype)
    return per_sample.mean()
