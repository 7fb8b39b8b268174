"""The textual-inversion training recipe, top to bottom.

    config -> run folder -> accelerator -> frozen model -> placeholder vectors -> data
           -> optimizer & schedule -> loop (loss, step, save, validate) -> final embedding
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .atomic import atomic_write_text
from .config import ConfigError, SdTextualInversionConfig, dump_config
from .data import (
    Captioner,
    TextualInversionDataset,
    cache_vae_outputs,
    check_captions_hold_placeholder,
    find_records,
    make_dataloader,
)
from .embedding_convert import install_for_invokeai
from .embedding_files import save_embedding
from .loss import denoising_loss, sample_latents
from .model_loading import load_sd_components
from .outputs import embedding_file_name, make_run_dir, save_checkpoint
from .tokens import add_placeholder, initial_vectors, install_placeholder_embedding, num_vectors_for
from .validation import generate_validation_images, log_validation_images

log = logging.getLogger("tiforge")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class StepInfo:
    """What the loop reports after each optimizer step (progress views, benchmarks)."""

    step: int
    max_steps: int
    epoch: int
    loss: float
    lr: float
    seconds: float  # this step's own time: data, forward, backward, update; not saving or validating


@dataclass
class TrainResult:
    run_dir: Path
    embedding_path: Path
    global_step: int
    final_loss: float | None
    validation_dirs: list[Path] = field(default_factory=list)
    checkpoint_dirs: list[Path] = field(default_factory=list)


def _check_precision(config: SdTextualInversionConfig, cuda: bool) -> None:
    if config.mixed_precision == "fp16" and not cuda:
        raise ConfigError("mixed_precision: fp16 needs a CUDA GPU; on this machine use bf16 or no")
    if config.xformers and not cuda:
        raise ConfigError("xformers: xformers attention needs a CUDA GPU; set xformers: false")


def _new_run_dir(config: SdTextualInversionConfig) -> Path:
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState()
    holder = [str(make_run_dir(config.base_output_dir)) if state.is_main_process else None]
    if state.num_processes > 1:
        broadcast_object_list(holder)
    return Path(holder[0])


def _fresh_accelerator_state() -> None:
    # accelerate keeps its settings in process-wide singletons; a second run in the same process
    # (tests, the console UI, benchmarks) must be free to choose another mixed precision.
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()


def _log_to_run_dir(run_dir: Path) -> None:
    logger = logging.getLogger("tiforge")
    for old in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
        logger.removeHandler(old)  # an earlier run's log in this process
        old.close()
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def train(
    config: SdTextualInversionConfig,
    progress: bool = True,
    on_step: Callable[[StepInfo], None] | None = None,
) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler

    _check_precision(config, torch.cuda.is_available())

    # --- run folder and accelerator -----------------------------------------------------------
    run_dir = _new_run_dir(config)
    report_to = None if config.report_to in (None, "none") else config.report_to
    _fresh_accelerator_state()
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision or "no",
        log_with=report_to,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
    )
    main = accelerator.is_main_process
    if main:
        _log_to_run_dir(run_dir)
    if config.seed is not None:
        set_seed(config.seed)
    weight_dtype = DTYPES[config.weight_dtype]
    device = accelerator.device

    # --- frozen model ---------------------------------------------------------------------------
    log.info("loading model %s", config.model)
    parts = load_sd_components(config.model, config.hf_variant, config.single_file_config)
    prediction_type = config.prediction_type or parts.noise_scheduler.config.prediction_type
    if config.prediction_type is not None:
        parts.noise_scheduler.register_to_config(prediction_type=config.prediction_type)
    for module in (parts.vae, parts.unet, parts.text_encoder):
        module.requires_grad_(False)
        module.to(device)
        if module.dtype != weight_dtype:
            module.to(dtype=weight_dtype)
    log.info("%s model (text width %d), prediction_type %s", parts.family, parts.text_width, prediction_type)

    # --- placeholder vectors: the only trainable parameters ------------------------------------
    table = parts.text_encoder.get_input_embeddings().weight
    num_vectors = num_vectors_for(config, parts.tokenizer)
    vectors = initial_vectors(
        parts.tokenizer,
        table,
        num_vectors=num_vectors,
        initializer_token=config.initializer_token,
        initial_phrase=config.initial_phrase,
        initial_embedding_file=config.initial_embedding_file,
        placeholder_token=config.placeholder_token,
    )
    placeholder = add_placeholder(parts.tokenizer, config.placeholder_token, num_vectors)
    embedding = install_placeholder_embedding(parts.text_encoder, placeholder, vectors.to(device))
    log.info("placeholder %r -> %d vector(s), token ids %s", placeholder.token, num_vectors, list(placeholder.ids))

    if config.gradient_checkpointing:
        # Both models only checkpoint in train mode; neither has dropout, so outputs are unchanged.
        parts.unet.train()
        parts.unet.enable_gradient_checkpointing()
        parts.text_encoder.train()
        parts.text_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.xformers:
        parts.unet.enable_xformers_memory_efficient_attention()

    # --- data ----------------------------------------------------------------------------------
    vae_config = parts.vae.config
    dl = config.data_loader
    records = find_records(dl)
    uses_templates = dl.caption_preset is not None or dl.caption_templates is not None
    check_captions_hold_placeholder(records, placeholder.token, uses_templates)
    dataset = TextualInversionDataset(records, dl, Captioner(dl, placeholder), parts.tokenizer)
    if config.cache_vae_outputs:
        log.info("caching VAE outputs for %d images", len(dataset))
        cache_vae_outputs(dataset, parts.vae, device, weight_dtype, progress=_bar("caching latents", main and progress))
        # The VAE is only needed again to decode validation images: park it off the accelerator,
        # or drop it when there is nothing to validate.
        if config.validation_prompts:
            parts.vae.to("cpu")
        else:
            parts.vae = None
    dataloader = make_dataloader(dataset, config.train_batch_size, dl.dataloader_num_workers, config.seed)

    # --- optimizer and schedule ----------------------------------------------------------------
    updates_per_epoch = math.ceil(len(dataloader) / config.gradient_accumulation_steps)
    max_steps = config.max_train_steps or config.max_train_epochs * updates_per_epoch
    num_epochs = math.ceil(max_steps / updates_per_epoch)
    lr = config.learning_rate
    if config.scale_lr:
        lr *= config.gradient_accumulation_steps * config.train_batch_size * accelerator.num_processes
    optimizer = _build_optimizer(config, [embedding.vectors], lr)
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        # accelerate steps a prepared scheduler once per process per update.
        num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_steps * accelerator.num_processes,
        num_cycles=config.lr_num_cycles,
        power=config.lr_power,
    )
    text_encoder, optimizer, dataloader, lr_scheduler = accelerator.prepare(
        parts.text_encoder, optimizer, dataloader, lr_scheduler
    )

    if main:
        resolved = config.model_copy(update={"num_vectors": num_vectors})
        atomic_write_text(run_dir / "config.yaml", dump_config(resolved))
        tracker_config = {k: v for k, v in resolved.model_dump(mode="json").items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("tiforge", config=tracker_config)
    log.info(
        "%d images, batch %d x %d accumulation x %d process(es), %d update(s) per epoch, %d steps over %d epoch(s), lr %g",
        len(dataset), config.train_batch_size, config.gradient_accumulation_steps, accelerator.num_processes,
        updates_per_epoch, max_steps, num_epochs, lr,
    )

    # --- saving and validating -----------------------------------------------------------------
    file_name = embedding_file_name(placeholder.token, config.save_model_as)
    result = TrainResult(run_dir=run_dir, embedding_path=run_dir / file_name, global_step=0, final_loss=None)
    metadata = {"tiforge.base_model": config.model, "tiforge.family": parts.family}
    save_options = {"format": config.save_format, "precision": config.save_precision}
    scaling_factor = vae_config.scaling_factor

    def current_vectors() -> torch.Tensor:
        return accelerator.unwrap_model(text_encoder).get_input_embeddings().vectors.detach()

    def checkpoint(kind: str, index: int, step: int) -> None:
        if main:
            path = save_checkpoint(run_dir, kind, index, placeholder.token, current_vectors(), metadata,
                                   config.max_checkpoints, step=step, extension=config.save_model_as, **save_options)
            result.checkpoint_dirs.append(path)
        accelerator.wait_for_everyone()

    def validate(label: str, step: int) -> None:
        if main and config.validation_prompts:
            out_dir = run_dir / "validation" / label
            images = generate_validation_images(
                components=parts,
                text_encoder=accelerator.unwrap_model(text_encoder),
                placeholder=placeholder,
                prompts=config.validation_prompts,
                negative_prompts=config.negative_validation_prompts,
                images_per_prompt=config.num_validation_images_per_prompt,
                num_inference_steps=config.num_validation_inference_steps,
                guidance_scale=config.validation_guidance_scale,
                resolution=dl.height_width,
                seed=config.seed,
                device=device,
                out_dir=out_dir,
                cpu_offload=config.enable_cpu_offload_during_validation,
                autocast=accelerator.autocast,
            )
            log_validation_images(accelerator.trackers, images, config.validation_prompts, step)
            result.validation_dirs.append(out_dir)
            log.info("validation images: %s", out_dir)
        accelerator.wait_for_everyone()

    # --- the loop ------------------------------------------------------------------------------
    bar = tqdm(total=max_steps, desc="training", disable=not (main and progress), dynamic_ncols=True)
    global_step = 0
    window_loss, window_batches = torch.zeros((), device=device), 0  # loss averaged over accumulation
    step_started = time.perf_counter()
    for epoch in range(1, num_epochs + 1):
        text_encoder.train(config.gradient_checkpointing)
        for batch in dataloader:
            with accelerator.accumulate(text_encoder), accelerator.autocast():
                if "latent_params" in batch:
                    latents = sample_latents(batch["latent_params"].to(device), scaling_factor).to(weight_dtype)
                else:
                    with torch.no_grad():
                        pixels = batch["pixel_values"].to(device, weight_dtype)
                        latents = parts.vae.encode(pixels).latent_dist.sample() * scaling_factor
                hidden = text_encoder(batch["input_ids"].to(device))[0].to(weight_dtype)
                loss = denoising_loss(
                    parts.unet, parts.noise_scheduler, latents, hidden,
                    prediction_type=prediction_type, min_snr_gamma=config.min_snr_gamma,
                )
                accelerator.backward(loss)
                window_loss += loss.detach().float()
                window_batches += 1
                if accelerator.sync_gradients and config.max_grad_norm is not None:
                    accelerator.clip_grad_norm_([embedding.vectors], config.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)

            if not accelerator.sync_gradients:
                continue
            global_step += 1
            result.final_loss = (window_loss / window_batches).item()
            window_loss.zero_()
            window_batches = 0
            step_seconds = time.perf_counter() - step_started
            logs = {"loss": result.final_loss, "lr": lr_scheduler.get_last_lr()[0]}
            accelerator.log(logs, step=global_step)
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}", epoch=epoch)
            if on_step is not None and main:
                on_step(StepInfo(global_step, max_steps, epoch, logs["loss"], logs["lr"], step_seconds))
            if config.save_every_n_steps and global_step % config.save_every_n_steps == 0 and global_step < max_steps:
                checkpoint("step", global_step, global_step)
            if config.validate_every_n_steps and global_step % config.validate_every_n_steps == 0 and global_step < max_steps:
                validate(f"step_{global_step:08d}", global_step)
            if global_step >= max_steps:
                break
            step_started = time.perf_counter()
        last_epoch = global_step >= max_steps
        if config.save_every_n_epochs and epoch % config.save_every_n_epochs == 0 and not last_epoch:
            checkpoint("epoch", epoch, global_step)
        if config.validate_every_n_epochs and epoch % config.validate_every_n_epochs == 0 and not last_epoch:
            validate(f"epoch_{epoch:04d}", global_step)
        if last_epoch:
            break
        step_started = time.perf_counter()
    bar.close()
    result.global_step = global_step

    # --- final embedding -------------------------------------------------------------------------
    if main:
        save_embedding(result.embedding_path, placeholder.token, current_vectors(), metadata, step=global_step,
                       **save_options)
        log.info("embedding saved: %s", result.embedding_path)
        if config.install_embeddings_root:
            installed = install_for_invokeai(result.embedding_path, config.install_embeddings_root, placeholder.token)
            log.info("installed for InvokeAI: %s", installed)
    accelerator.wait_for_everyone()
    validate("final", global_step)
    accelerator.end_training()
    return result


def _build_optimizer(config: SdTextualInversionConfig, params, lr: float):
    opt = config.optimizer
    if opt.optimizer_type == "AdamW":
        return torch.optim.AdamW(
            params, lr=lr, betas=(opt.beta1, opt.beta2), weight_decay=opt.weight_decay, eps=opt.epsilon
        )
    try:
        from prodigyopt import Prodigy
    except ImportError:
        raise ConfigError("optimizer.optimizer_type: Prodigy needs the prodigyopt package (pip install prodigyopt)") from None
    return Prodigy(
        params, lr=lr, weight_decay=opt.weight_decay,
        use_bias_correction=opt.use_bias_correction, safeguard_warmup=opt.safeguard_warmup,
    )


def _bar(desc: str, enabled: bool):
    return lambda it: tqdm(it, desc=desc, disable=not enabled, dynamic_ncols=True)
