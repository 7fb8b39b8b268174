"""kohya's sample pictures during training (`--sample_prompts` with `--sample_every_n_steps|epochs`,
`--sample_at_first`): each prompt with its own size, steps, scale, seed and sampler, generated with
the vectors being trained, written to `<run folder>/sample/` under kohya's file names."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Callable

import torch

from tiforge.training.sample_prompts import SamplePrompt, make_scheduler, read_sample_prompts
from tiforge.training.validation import decode_latents, make_pipeline, prompt_kwargs

log = logging.getLogger("tiforge")


def sample_file_name(output_name: str | None, step: int, epoch: int | None, prompt: SamplePrompt, stamp: str) -> str:
    """kohya's name: [<output_name>_]<e + 6-digit epoch | 6-digit step>_<prompt nn>_<time>[_<seed>].png"""
    number = f"e{epoch:06d}" if epoch is not None else f"{step:06d}"
    seed = "" if prompt.seed is None else f"_{prompt.seed}"
    return f"{output_name + '_' if output_name else ''}{number}_{prompt.index:02d}_{stamp}{seed}.png"


class SamplePictures:
    """When to sample (kohya's rules: every N epochs wins over every N steps) and the sampling itself."""

    def __init__(self, config, run_dir: Path, seed: int):
        self.config, self.seed = config, seed
        self.out_dir = run_dir / "sample"
        self.prompts = read_sample_prompts(config.sample_prompts) if config.sample_prompts else []
        if self.prompts and config.sample_every_n_epochs and config.sample_every_n_steps:
            log.info("sample pictures every %d epoch(s); sample_every_n_steps=%d is ignored (kohya's rule: epochs win)",
                     config.sample_every_n_epochs, config.sample_every_n_steps)

    def at_step(self, step: int) -> bool:
        c = self.config
        if not self.prompts:
            return False
        if step == 0:
            return c.sample_at_first
        return c.sample_every_n_epochs is None and bool(c.sample_every_n_steps) and step % c.sample_every_n_steps == 0

    def at_epoch(self, epoch: int) -> bool:
        n = self.config.sample_every_n_epochs
        return bool(self.prompts) and n is not None and epoch % n == 0

    @torch.no_grad()
    def generate(self, components, prompt_encoder, device, step: int, epoch: int | None,
                 autocast=contextlib.nullcontext, should_stop: Callable[[], bool] = lambda: False) -> list[Path]:
        """The pictures of every prompt; a stop request (`should_stop`) is honoured between pictures and
        between sampler steps, and leaves the picture it cut short unwritten."""
        log.info("sample pictures at step %d: %d prompt(s) from %s", step, len(self.prompts), self.config.sample_prompts)
        vae_device = next(components.vae.parameters()).device
        components.vae.to(device)
        pipe = make_pipeline(components, prompt_encoder, with_text_encoders=False)
        pipe.set_progress_bar_config(disable=True)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        was_training = prompt_encoder.training
        prompt_encoder.eval()
        written = []
        try:
            with autocast():
                for p in self.prompts:
                    path = None if should_stop() else self._one(pipe, components, prompt_encoder, device, p, step,
                                                                 epoch, should_stop)
                    if path is None:
                        log.info("sample pictures: stopped on request after %d of %d", len(written), len(self.prompts))
                        break
                    written.append(path)
        finally:
            prompt_encoder.train(was_training)
            components.vae.to(vae_device)
        return written

    def _one(self, pipe, components, prompt_encoder, device, p: SamplePrompt, step: int, epoch: int | None,
             should_stop: Callable[[], bool]) -> Path | None:
        pipe.scheduler = make_scheduler(p.sampler or self.config.sample_sampler, components.noise_scheduler.config)
        seed = p.seed if p.seed is not None else (self.seed * 1000003 + step * 101 + p.index) % 2**63
        latents = pipe(**prompt_kwargs(prompt_encoder, p.prompt, p.negative,
                                       getattr(pipe.config, "force_zeros_for_empty_prompt", True)),
                       num_inference_steps=p.steps, guidance_scale=p.scale, height=p.height, width=p.width,
                       generator=torch.Generator(device="cpu").manual_seed(seed), output_type="latent",
                       callback_on_step_end=_interrupt_when(should_stop)).images
        if pipe.interrupt:
            return None
        image = decode_latents(pipe, latents, device)[0]
        path = self.out_dir / sample_file_name(self.config.output_name, step, epoch, p,
                                               time.strftime("%Y%m%d%H%M%S", time.localtime()))
        image.save(path)
        return path


def _interrupt_when(should_stop: Callable[[], bool]):
    """A diffusers step-end callback that skips the remaining sampler steps once a stop is requested."""
    def callback(pipe, step_index, timestep, callback_kwargs):
        if should_stop():
            pipe._interrupt = True  # diffusers' own flag: its denoising loop skips the steps left
        return callback_kwargs
    return callback
