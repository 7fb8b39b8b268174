"""The denoising loss of textual inversion: noise the latents, predict, compare.

Kept free of model loading and data so that it can be tested on its own with fixed noise and
timesteps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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

    def timesteps(self, batch: int, high: int, low: int = 0) -> torch.Tensor:
        """Uniform in [low, high), or all `high` when the range is empty (kohya's rule for min = max)."""
        if low >= high:
            return torch.full((batch,), high, device=self.device, dtype=torch.long)
        full = torch.randint(low, high, (batch * self.num_processes,), generator=self.generator, device=self.device)
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
    """Signal-to-noise ratio per timestep; a zero-terminal-SNR schedule keeps its original one for the
    loss weights (`all_snr`, see model.noise)."""
    table = getattr(noise_scheduler, "all_snr", None)
    if table is not None:
        return table.to(timesteps.device)[timesteps].float()
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alphas_cumprod / (1.0 - alphas_cumprod)


def min_snr_weights(noise_scheduler, timesteps: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma (arXiv:2303.09556): per-sample weights that cap the pull of low-noise steps.

    For v-prediction the loss is already scaled by (snr + 1) relative to epsilon, hence the divisor.
    """
    s = snr(noise_scheduler, timesteps)
    capped = torch.clamp(s, max=gamma)
    return capped / (s + 1.0) if prediction_type == "v_prediction" else capped / s.clamp(min=1e-8)


@dataclass(frozen=True)
class LossSettings:
    """kohya's loss options: the per-element error and the per-sample weights besides Min-SNR."""

    loss_type: str = "l2"
    huber_c: float = 0.1
    huber_schedule: str = "snr"
    huber_scale: float = 1.0
    scale_v_pred_loss_like_noise_pred: bool = False
    debiased_estimation_loss: bool = False

    @classmethod
    def of(cls, config) -> "LossSettings":
        return cls(**{name: getattr(config, name) for name in cls.__dataclass_fields__})


def huber_threshold(noise_scheduler, timesteps: torch.Tensor, settings: LossSettings) -> torch.Tensor:
    """kohya's per-sample pseudo-Huber c: constant c x scale; exponential from scale at t=0 down to
    c x scale at the last step; snr (the default) c + (1 - c) / (1 + sigma_t)^2, so near 1 where the
    noise is faint and c where it dominates."""
    c = settings.huber_c
    if settings.huber_schedule == "constant":
        return torch.full(timesteps.shape, c * settings.huber_scale, device=timesteps.device)
    if settings.huber_schedule == "exponential":
        alpha = -math.log(c) / noise_scheduler.config.num_train_timesteps
        return torch.exp(-alpha * timesteps.float()) * settings.huber_scale
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    sigmas = ((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5
    return (1 - c) / (1 + sigmas) ** 2 + c


def elementwise_error(pred: torch.Tensor, target: torch.Tensor, settings: LossSettings,
                      huber_c: torch.Tensor | None) -> torch.Tensor:
    if settings.loss_type == "l2":
        return F.mse_loss(pred, target, reduction="none")
    if settings.loss_type == "l1":
        return F.l1_loss(pred, target, reduction="none")
    c = huber_c.view(-1, *([1] * (pred.ndim - 1)))
    smooth = 2 * (torch.sqrt((pred - target) ** 2 + c**2) - c)
    return smooth * c if settings.loss_type == "huber" else smooth


def sample_weights(noise_scheduler, timesteps: torch.Tensor, prediction_type: str, min_snr_gamma: float | None,
                   settings: LossSettings) -> torch.Tensor | None:
    """The product of the per-sample loss weights that are on (None: all off)."""
    weights = None
    if min_snr_gamma is not None:
        weights = min_snr_weights(noise_scheduler, timesteps, min_snr_gamma, prediction_type)
    capped = None
    if settings.scale_v_pred_loss_like_noise_pred or settings.debiased_estimation_loss:
        capped = snr(noise_scheduler, timesteps).clamp(max=1000.0)  # t = 0 would be near infinite
    if settings.scale_v_pred_loss_like_noise_pred:
        weights = (capped / (capped + 1)) * (1 if weights is None else weights)
    if settings.debiased_estimation_loss:
        debias = 1 / (capped + 1) if prediction_type == "v_prediction" else 1 / capped.sqrt()
        weights = debias * (1 if weights is None else weights)
    return weights


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
    input_noise: torch.Tensor | None = None,
    settings: LossSettings | None = None,
    reg_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean denoising error per sample (Min-SNR and `settings`' weights), averaged over the batch.
    With `mask` ([batch, 1, H, W] in pixel space, 1 = train), each sample's error is averaged over its
    masked area only, so what lies outside the mask sends no gradient at all. `input_noise` (input
    perturbation) noises the latents in place of `noise`, which stays the target."""
    settings = settings or LossSettings()
    batch = latents.shape[0]
    if noise is None:
        noise = torch.randn_like(latents)
    if timesteps is None:
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,), device=latents.device)
    noisy = noise_scheduler.add_noise(latents, noise if input_noise is None else input_noise, timesteps)
    pred = unet(noisy, timesteps, encoder_hidden_states, return_dict=False, **(unet_kwargs or {}))[0]
    target = training_target(noise_scheduler, latents, noise, timesteps, prediction_type)
    huber_c = huber_threshold(noise_scheduler, timesteps, settings) if settings.loss_type in ("huber", "smooth_l1") \
        else None
    error = elementwise_error(pred.float(), target.float(), settings, huber_c)
    if mask is None:
        per_sample = error.mean(dim=list(range(1, pred.ndim)))
    else:
        weights = latent_mask(mask, pred.shape[-2:]).to(error.device)
        per_sample = (error * weights).sum(dim=(1, 2, 3)) / (weights.sum(dim=(1, 2, 3)) * error.shape[1]).clamp(min=1e-6)
    weights = sample_weights(noise_scheduler, timesteps, prediction_type, min_snr_gamma, settings)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample.device)
    if reg_weights is not None:  # kohya's prior_loss_weight for regularization pictures
        per_sample = per_sample * reg_weights.to(per_sample.device, per_sample.dtype)
    return per_sample.mean()
