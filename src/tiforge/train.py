"""The textual-inversion training recipe, top to bottom.

    config -> run folder -> accelerator -> frozen model -> placeholder vectors -> data
           -> optimizer & schedule -> (resume) -> loop (loss, step, save, validate) -> final embedding

SD 1.x/2.x and SDXL share every line; what differs (one text encoder or two, SDXL's pooled and
size/crop conditioning) lives in `text_conditioning.PromptEncoder`.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .atomic import atomic_write_text
from .checkpoints import (
    CheckpointError,
    capture_rng,
    changed_vector_count,
    find_checkpoint,
    incompatible_fields,
    load_training_state,
    restore_rng,
    save_checkpoint,
)
from .config import ConfigError, TrainingConfig, dump_config
from .data import Captioner, TextualInversionDataset, check_captions_hold_placeholder, make_dataloader
from .data_sources import DatasetError, apply_kohya_dataset_settings, find_records
from .dataset_check import apply_policy, scan_records
from .embedding_convert import install_for_invokeai
from .embedding_files import save_embedding
from .hub import push_embedding
from .interrupts import StopRequests, TrainingStopped, resume_command
from .latent_cache import cache_vae_outputs, default_cache_dir
from .loss import NoiseSource, denoising_loss, sample_latents
from .model_loading import load_sd_components
from .output_layout import diffusers_concept_files, flat_run_dir, plan_outputs, run_dir_of_checkpoint
from .outputs import check_output_space, estimate_output_bytes, make_run_dir
from .precision import cpu_autocast_dtypes, fp16_autocast_on_cpu, guarded_update
from .run_guard import RunFolderLock, RunRecord, record_failure
from .start_checks import check_caption_lengths, warn_nothing_left, warn_vector_count
from .text_conditioning import PromptEncoder, unet_conditioning
from .tokens import initial_vectors
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
    run_dir: str = ""


@dataclass
class TrainResult:
    run_dir: Path
    embedding_path: Path
    global_step: int
    final_loss: float | None
    validation_dirs: list[Path] = field(default_factory=list)
    checkpoint_dirs: list[Path] = field(default_factory=list)


def train(
    config: TrainingConfig,
    progress: bool = True,
    on_step: Callable[[StepInfo], None] | None = None,
    stop_event: threading.Event | None = None,
    on_event: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train one embedding (see `_train`); a run that fails writes why into its train.log, and a new
    run that fails before its first step leaves no folder behind."""
    record = RunRecord()

    def count_step(info: StepInfo) -> None:
        record.steps = info.step
        if on_step is not None:
            on_step(info)

    try:
        return _train(config, progress, count_step, stop_event, on_event, record)
    except BaseException as err:
        record_failure(record, err)
        raise
    finally:
        if record.lock is not None:
            record.lock.release()


def _train(
    config: TrainingConfig,
    progress: bool,
    on_step: Callable[[StepInfo], None] | None,
    stop_event: threading.Event | None,
    on_event: Callable[[dict], None] | None,
    record: RunRecord,
) -> TrainResult:
    """Train one embedding. `on_step` hears about every optimizer step, `on_event` about every file
    written ({"event": "checkpoint" | "validation" | "embedding", "path": ...}); setting `stop_event`
    stops after the current step as Ctrl-C does (checkpoint, embedding, TrainingStopped)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler

    def tell(event: str, path: Path) -> None:
        if on_event is not None:
            on_event({"event": event, "path": str(path)})

    config = apply_kohya_dataset_settings(_fit_to_machine(config, torch.cuda.is_available()))
    if config.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # --- run folder (new, or the resumed run's) and accelerator ---------------------------------
    resume_from = _resume_point(config)
    state = load_training_state(resume_from) if resume_from else None
    run_dir = run_dir_of_checkpoint(resume_from) if resume_from else _new_run_dir(config)
    # Only a timestamped folder of our own making may be removed again; a flat layout writes into
    # the user's output_dir, which is never deleted.
    record.run_dir, record.new_run = run_dir, state is None and config.output_layout == "run_folders"
    report_to = None if config.report_to in (None, "none") else config.report_to
    _fresh_accelerator_state()
    accelerator = Accelerator(
        # Without CUDA, only an explicit cpu=True lets `accelerate launch` start gloo ranks.
        cpu=not torch.cuda.is_available(),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision or "no",
        log_with=report_to,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
    )
    fp16_autocast_on_cpu(accelerator)
    main = accelerator.is_main_process
    if main:
        record.lock = RunFolderLock(run_dir).acquire()
        _log_to_run_dir(run_dir)
    if state:
        _check_resumable(state, config, resume_from)
        log.info("resuming from %s (step %d)", resume_from, state["global_step"])
        if main:
            _remove_stale_temporaries(run_dir)
    # Without a seed the run is still made of seeded parts, so that it can be resumed exactly.
    seed = state["seed"] if state else config.seed if config.seed is not None else secrets.randbelow(2**31)
    set_seed(seed)
    noise = NoiseSource(seed, accelerator.device, accelerator.num_processes, accelerator.process_index)
    weight_dtype = DTYPES[config.weight_dtype]
    device = accelerator.device

    # --- data, checked before any model loads: bad files are named, then skipped or refused ------
    dl = config.data_loader
    scan = scan_records(find_records(dl, config.use_masks), dl.height_width, config.use_masks,
                        progress=_bar("checking data", main and progress))
    records = apply_policy(scan, dl.on_bad_image)
    check_captions_hold_placeholder(records, config.placeholder_token, dl.uses_templates)
    _check_cacheable(config, records)

    # --- frozen model ---------------------------------------------------------------------------
    log.info("loading model %s", config.model)
    vae_model = getattr(config, "vae_model", None)
    vae_dtype = DTYPES[config.vae_dtype] if getattr(config, "vae_dtype", None) else None
    parts = load_sd_components(config.model, config.hf_variant, config.single_file_config, weight_dtype,
                               sdxl=config.is_sdxl, vae_model=vae_model, vae_dtype=vae_dtype,
                               progress=main and progress)
    prediction_type = config.prediction_type or parts.noise_scheduler.config.prediction_type
    if config.prediction_type is not None:
        parts.noise_scheduler.register_to_config(prediction_type=config.prediction_type)
    for module in parts.frozen_modules:
        module.requires_grad_(False)
        module.to(device)
    prompt_encoder = PromptEncoder.of(parts)
    log.info("%s model (text width %s), prediction_type %s", parts.family,
             " + ".join(map(str, prompt_encoder.widths.values())), prediction_type)

    # --- placeholder vectors, one set per text encoder: the only trainable parameters ----------
    if state:
        vectors = state["vectors"]
        if isinstance(vectors, torch.Tensor):  # checkpoints of format 1 held one encoder's tensor
            vectors = {prompt_encoder.names[0]: vectors}
    else:
        vectors = {
            name: initial_vectors(
                tokenizer,
                encoder.get_input_embeddings().weight,
                num_vectors=config.num_vectors,
                initializer_token=config.initializer_token,
                initial_phrase=config.initial_phrase,
                initial_embedding_file=config.initial_embedding_file,
                placeholder_token=config.placeholder_token,
                part=name,
            )
            for name, tokenizer, encoder in parts.text_encoders
        }
    num_vectors = next(iter(vectors.values())).shape[0]
    if not state:
        warn_vector_count(config, num_vectors)
    placeholder = prompt_encoder.add_placeholder(config.placeholder_token, vectors)
    trainable = prompt_encoder.trainable()
    log.info("placeholder %r -> %d vector(s), token ids %s", placeholder.token, num_vectors, list(placeholder.ids))

    if config.gradient_checkpointing:
        # The models only checkpoint in train mode; none has dropout, so outputs are unchanged.
        parts.unet.train()
        parts.unet.enable_gradient_checkpointing()
        for encoder in prompt_encoder.text_encoders:
            encoder.train()
            encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.xformers:
        parts.unet.enable_xformers_memory_efficient_attention()

    # --- dataset and its latents ------------------------------------------------------------------
    scaling_factor = parts.vae.config.scaling_factor
    dataset = TextualInversionDataset(records, dl, Captioner(dl, placeholder), prompt_encoder.tokenizers, seed=seed,
                                      sizes=scan.sizes, use_masks=config.use_masks)
    check_caption_lengths(dataset, prompt_encoder.tokenizers[0], placeholder.ids)
    if config.cache_vae_outputs:
        log.info("caching VAE outputs for %d images", len(records))
        disk = (config.latent_cache_dir or default_cache_dir()) if config.cache_vae_outputs_to_disk else None
        cache_vae_outputs(dataset, parts.vae, device, parts.vae.dtype, progress=_bar("caching latents", main and progress),
                          disk_dir=disk)
        # The VAE is only needed again to decode validation images: park it off the accelerator,
        # or drop it when there is nothing to validate.
        if config.validation_prompts:
            parts.vae.to("cpu")
        else:
            parts.vae = None
    dataloader = make_dataloader(dataset, config.train_batch_size, _num_workers(config))
    sampler = dataloader.batch_sampler

    # --- optimizer and schedule ----------------------------------------------------------------
    # accelerate deals the batches out to the processes in turn
    batches_per_epoch = math.ceil(sampler.batches_per_epoch() / accelerator.num_processes)
    updates_per_epoch = math.ceil(batches_per_epoch / config.gradient_accumulation_steps)
    max_steps = config.max_train_steps or config.max_train_epochs * updates_per_epoch
    num_epochs = math.ceil(max_steps / updates_per_epoch)
    lr = config.learning_rate
    if config.scale_lr:
        lr *= config.gradient_accumulation_steps * config.train_batch_size * accelerator.num_processes
    optimizer = _build_optimizer(config, trainable, lr)
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        # accelerate steps a prepared scheduler once per process per update.
        num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_steps * accelerator.num_processes,
        num_cycles=config.lr_num_cycles,
        power=config.lr_power,
    )
    text_model, optimizer, dataloader, lr_scheduler = accelerator.prepare(
        prompt_encoder, optimizer, dataloader, lr_scheduler
    )

    # --- where training starts: step 0, or the checkpoint's position ---------------------------
    global_step, start_epoch, skip_batches = 0, 1, 0
    if state:
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        if accelerator.scaler is not None and state.get("scaler"):
            accelerator.scaler.load_state_dict(state["scaler"])
        noise.load_state_dict(state["noise"])
        restore_rng(state["rng"])
        global_step, start_epoch, skip_batches = state["global_step"], state["epoch"], state["batches_in_epoch"]
        if skip_batches >= batches_per_epoch:
            start_epoch, skip_batches = start_epoch + 1, 0
        warn_nothing_left(resume_from, global_step, max_steps)

    resolved = config.model_copy(update={"num_vectors": num_vectors, "seed": seed, "resume_from_checkpoint": None})
    resolved_yaml = dump_config(resolved)
    if main:
        check_output_space(run_dir, estimate_output_bytes(config, num_vectors, sum(prompt_encoder.widths.values()),
                                                          max_steps, updates_per_epoch))
        if not state:
            atomic_write_text(run_dir / "config.yaml", resolved_yaml)
        tracker_config = {k: v for k, v in resolved.model_dump(mode="json").items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("tiforge", config=tracker_config)
    log.info(
        "%d images, batch %d x %d accumulation x %d process(es), %d update(s) per epoch, %d steps over %d epoch(s), lr %g",
        len(dataset), config.train_batch_size, config.gradient_accumulation_steps, accelerator.num_processes,
        updates_per_epoch, max_steps, num_epochs, lr,
    )

    # --- saving and validating -----------------------------------------------------------------
    plan = plan_outputs(config, placeholder.token, run_dir)
    result = TrainResult(run_dir=run_dir, embedding_path=plan.final, global_step=global_step, final_loss=None)
    metadata = {"tiforge.base_model": config.model, "tiforge.family": parts.family}
    save_options = {"format": config.save_format, "precision": config.save_precision}

    def current_vectors() -> torch.Tensor | dict[str, torch.Tensor]:
        return accelerator.unwrap_model(text_model).file_vectors()

    def save_final(step: int) -> None:
        if main:
            save_embedding(result.embedding_path, placeholder.token, current_vectors(), metadata, step=step,
                           **save_options)
            log.info("embedding saved: %s", result.embedding_path)
            tell("embedding", result.embedding_path)
        accelerator.wait_for_everyone()

    def checkpoint(kind: str, index: int, epoch: int, batches_in_epoch: int) -> Path:
        path = None
        if main:
            training_state = {
                "format": 2, "global_step": global_step, "epoch": epoch, "batches_in_epoch": batches_in_epoch,
                "seed": seed, "vectors": {k: v.cpu().float() for k, v in prompt_encoder.vectors().items()},
                "optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(),
                "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                "noise": noise.state_dict().cpu(), "rng": capture_rng(), "config": resolved.model_dump(mode="json"),
            }
            with tqdm(total=1, desc=f"saving checkpoint {kind} {index}", disable=not progress, leave=False,
                      dynamic_ncols=True) as saving:
                path = save_checkpoint(run_dir, kind, index, placeholder.token, current_vectors(), metadata,
                                       config.max_checkpoints, state=training_state, config_yaml=resolved_yaml,
                                       folder=plan.checkpoint_dir(kind, index), siblings=plan.checkpoint_siblings(kind),
                                       step=global_step, extension=plan.extension, file_name=plan.final.name,
                                       warn_layout=False, **save_options)
                if plan.snapshots_with_checkpoints:
                    snapshot(kind, index)
                saving.update(1)
            result.checkpoint_dirs.append(path)
            log.info("checkpoint saved: %s", path)
            tell("checkpoint", path)
        accelerator.wait_for_everyone()
        return path

    def snapshot(kind: str, index: int) -> None:
        if main:
            save_embedding(plan.snapshot(kind, index), placeholder.token, current_vectors(), metadata,
                           step=global_step, warn_layout=False, **save_options)

    def validate(label: str, step: int) -> None:
        if main and config.validation_prompts:
            out_dir = run_dir / "validation" / label
            images = generate_validation_images(
                components=parts,
                prompt_encoder=accelerator.unwrap_model(text_model),
                prompts=config.validation_prompts,
                negative_prompts=config.negative_validation_prompts,
                images_per_prompt=config.num_validation_images_per_prompt,
                num_inference_steps=config.num_validation_inference_steps,
                guidance_scale=config.validation_guidance_scale,
                resolution=dl.height_width,
                seed=seed,
                device=device,
                out_dir=out_dir,
                cpu_offload=config.enable_cpu_offload_during_validation,
                autocast=accelerator.autocast,
                progress=progress,
            )
            log_validation_images(accelerator.trackers, images, config.validation_prompts, step)
            result.validation_dirs.append(out_dir)
            log.info("validation images: %s", out_dir)
            tell("validation", out_dir)
        accelerator.wait_for_everyone()

    def stop(message: str, exit_code: int, epoch: int, batches_in_epoch: int) -> None:
        path = checkpoint("step", global_step, epoch, batches_in_epoch)
        save_final(global_step)
        accelerator.end_training()
        raise TrainingStopped(f"{message}\nSaved step {global_step}: {result.embedding_path}\n"
                              f"To go on: {resume_command(path, run_dir)}", exit_code)

    # --- the loop ------------------------------------------------------------------------------
    bar = tqdm(total=max_steps, initial=global_step, desc="training", disable=not (main and progress),
               dynamic_ncols=True)
    window_loss, window_batches = torch.zeros((), device=device), 0  # loss averaged over accumulation
    nonfinite_in_a_row = 0
    step_started = time.perf_counter()
    with StopRequests() as stop_requests:
        for epoch in range(start_epoch, num_epochs + 1):
            if global_step >= max_steps:
                break
            skip = skip_batches if epoch == start_epoch else 0
            sampler.begin(epoch, skip * accelerator.num_processes)
            accelerator.step = skip  # accelerate's position in the accumulation window
            batches_in_epoch = skip
            text_model.train(config.gradient_checkpointing)
            for batch in dataloader:
                batches_in_epoch += 1
                with accelerator.accumulate(text_model), accelerator.autocast():
                    if "latent_params" in batch:
                        params = batch["latent_params"].to(device)
                    else:
                        with torch.no_grad():
                            pixels = batch["pixel_values"].to(device, parts.vae.dtype)
                            params = parts.vae.encode(pixels).latent_dist.parameters
                    mean_shape = (params.shape[0], params.shape[1] // 2, *params.shape[2:])
                    latents = sample_latents(params.float(), scaling_factor, noise.randn(mean_shape)).to(weight_dtype)
                    hidden, unet_kwargs = unet_conditioning(text_model, batch["input_ids"], batch)
                    loss = denoising_loss(
                        parts.unet, parts.noise_scheduler, latents, hidden,
                        prediction_type=prediction_type, min_snr_gamma=config.min_snr_gamma,
                        noise=noise.randn(latents.shape).to(latents.dtype),
                        timesteps=noise.timesteps(latents.shape[0], parts.noise_scheduler.config.num_train_timesteps),
                        unet_kwargs=unet_kwargs, mask=batch["mask"].to(device) if "mask" in batch else None,
                    )
                    accelerator.backward(loss)
                    window_loss += loss.detach().float()
                    window_batches += 1
                    finite, grad_norm = True, None
                    if accelerator.sync_gradients:
                        # Gradients are averaged over processes by now, so every process decides alike.
                        outcome = guarded_update(trainable, max_grad_norm=config.max_grad_norm,
                                                 scaler=accelerator.scaler, unscale=accelerator.unscale_gradients,
                                                 step=optimizer.step, step_was_skipped=lambda: optimizer.step_was_skipped)
                        finite, grad_norm = outcome.finite, outcome.grad_norm
                        if finite:
                            lr_scheduler.step()
                    else:  # accelerate only counts these until the window is full
                        optimizer.step()
                        lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)

                if not accelerator.sync_gradients:
                    continue
                if not finite:
                    nonfinite_in_a_row += 1
                    log.warning("non-finite gradient at step %d: step skipped (%d in a row)",
                                global_step + 1, nonfinite_in_a_row)
                    window_loss.zero_()
                    window_batches = 0
                    if nonfinite_in_a_row >= config.max_nonfinite_steps:
                        stop(f"Training stopped: {nonfinite_in_a_row} steps in a row had NaN/inf gradients "
                             "(max_nonfinite_steps). Lower the learning rate, or use bf16/fp32 instead of fp16.",
                             3, epoch, batches_in_epoch)
                    continue
                nonfinite_in_a_row = 0
                global_step += 1
                result.final_loss = (window_loss / window_batches).item()
                window_loss.zero_()
                window_batches = 0
                step_seconds = time.perf_counter() - step_started
                logs = {"loss": result.final_loss, "lr": lr_scheduler.get_last_lr()[0]}
                if grad_norm is not None:
                    logs["grad_norm"] = grad_norm.item()
                accelerator.log({**logs, **_vector_norms(prompt_encoder)}, step=global_step)
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}", epoch=epoch)
                if on_step is not None and main:
                    on_step(StepInfo(global_step, max_steps, epoch, logs["loss"], logs["lr"], step_seconds, str(run_dir)))
                if _agreed(accelerator, stop_requests.requested or (stop_event is not None and stop_event.is_set())):
                    stop("Training interrupted.", stop_requests.exit_code, epoch, batches_in_epoch)
                if config.save_embedding_every_n_steps and global_step % config.save_embedding_every_n_steps == 0:
                    snapshot("step", global_step)
                if config.save_every_n_steps and global_step % config.save_every_n_steps == 0 and global_step < max_steps:
                    checkpoint("step", global_step, epoch, batches_in_epoch)
                if config.validate_every_n_steps and global_step % config.validate_every_n_steps == 0 and global_step < max_steps:
                    validate(f"step_{global_step:08d}", global_step)
                if global_step >= max_steps:
                    break
                step_started = time.perf_counter()
            last_epoch = global_step >= max_steps
            if config.save_every_n_epochs and epoch % config.save_every_n_epochs == 0 and not last_epoch:
                checkpoint("epoch", epoch, epoch, batches_in_epoch)
            if config.validate_every_n_epochs and epoch % config.validate_every_n_epochs == 0 and not last_epoch:
                validate(f"epoch_{epoch:04d}", global_step)
            step_started = time.perf_counter()
    bar.close()
    result.global_step = global_step

    # --- final embedding -------------------------------------------------------------------------
    _check_ranks_agree(accelerator, torch.cat([v.flatten() for v in prompt_encoder.vectors().values()]))
    save_final(global_step)
    if main and plan.layout in ("diffusers", "invokeai"):
        for path, text in diffusers_concept_files(run_dir, placeholder.token, config.data_loader.caption_preset):
            atomic_write_text(path, text + "\n")
    if main and config.install_embeddings_root:
        installed = install_for_invokeai(result.embedding_path, config.install_embeddings_root, placeholder.token)
        log.info("installed for InvokeAI: %s", installed)
    validate("final", global_step)
    accelerator.end_training()
    if main and config.push_to_hub:
        repo = config.hub_model_id or Path(config.base_output_dir).expanduser().resolve().name
        log.info("uploaded to the hub: %s", push_embedding(result.embedding_path, repo, config.hub_token))
    return result


# ---------------------------------------------------------------------------------- helpers


def _num_workers(config: TrainingConfig) -> int:
    if config.data_loader.dataloader_num_workers is not None:
        return config.data_loader.dataloader_num_workers
    if config.cache_vae_outputs:
        return 0  # cached latents: an item is a tensor lookup and a tokenizer call
    if threading.current_thread() is not threading.main_thread():
        return 0  # a front end trains in a thread: forking worker processes from it is not safe
    import os

    return max(0, min(4, (os.cpu_count() or 1) - 1))


def _check_cacheable(config: TrainingConfig, records) -> None:
    """kohya sets augmentations per subset, so this is only known once the data is read."""
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


def _vector_norms(prompt_encoder: PromptEncoder) -> dict[str, float]:
    norms = {}
    for name, vectors in prompt_encoder.vectors().items():
        prefix = f"vector_norm/{name}/" if prompt_encoder.sdxl else "vector_norm/"
        norms.update({f"{prefix}{i}": n for i, n in enumerate(vectors.float().norm(dim=1).tolist())})
    return norms


def _fit_to_machine(config: TrainingConfig, cuda: bool) -> TrainingConfig:
    """GPU-only settings on a machine without CUDA: say so and use what works here."""
    # float16 weights and fp16 mixed precision run on a CPU too; see precision.py for what does not
    changes = {} if cuda else cpu_autocast_dtypes(config)
    if config.xformers and not cuda:
        log.warning("xformers needs a CUDA GPU; using PyTorch's scaled-dot-product attention on this machine")
        changes["xformers"] = False
    if config.xformers and cuda:
        import importlib.util

        if importlib.util.find_spec("xformers") is None:
            raise ConfigError("xformers: the xformers package is not installed (pip install xformers), or set "
                              "xformers: false to use PyTorch's scaled-dot-product attention")
    return config.model_copy(update=changes) if changes else config


def _resume_point(config: TrainingConfig) -> Path | None:
    if not config.resume_from_checkpoint:
        return None
    try:
        return find_checkpoint(config.resume_from_checkpoint, config.base_output_dir)
    except CheckpointError:
        if config.resume_from_checkpoint != "latest":
            raise
        # As in the diffusers and InvokeAI trainers: "latest" on a fresh output folder starts anew.
        log.info("resume_from_checkpoint: latest: no checkpoint in %s yet; starting a new run", config.base_output_dir)
        return None


def _check_resumable(state: dict, config: TrainingConfig, folder: Path) -> None:
    current = config.model_dump(mode="json")
    problems = incompatible_fields(state["config"], current) + changed_vector_count(state, config)
    if problems:
        raise CheckpointError(
            f"{folder}: cannot resume with a different setup; change these back or start a new run:\n  - "
            + "\n  - ".join(problems)
        )


def _new_run_dir(config: TrainingConfig) -> Path:
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState(cpu=not torch.cuda.is_available())
    if state.is_main_process:
        check_output_space(config.base_output_dir, 0)  # unwritable or not a folder: say so before mkdir fails
    if config.output_layout != "run_folders":
        return flat_run_dir(config)  # the same folder on every process
    holder = [str(make_run_dir(config.base_output_dir)) if state.is_main_process else None]
    if state.num_processes > 1:
        broadcast_object_list(holder)
    return Path(holder[0])


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Half-written files of a killed run live only under hidden temporary names; clear them away."""
    import shutil

    for tmp in sorted(run_dir.rglob(".*.tmp"), key=lambda p: len(p.parts), reverse=True):
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def _agreed(accelerator, flag: bool) -> bool:
    """True when any process saw `flag`; every process must stop at the same step."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), "sum").item() > 0)


def _check_ranks_agree(accelerator, vectors: torch.Tensor) -> None:
    if accelerator.num_processes == 1:
        return
    gathered = accelerator.gather(vectors.unsqueeze(0))
    if not all(torch.equal(gathered[0], g) for g in gathered[1:]):
        raise RuntimeError("the learned vectors differ between processes; data-parallel training went out of step")
    log.info("vectors identical across %d processes", accelerator.num_processes)


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


def _build_optimizer(config: TrainingConfig, params, lr: float):
    opt = config.optimizer
    if opt.optimizer_type == "AdamW8bit":
        try:
            import bitsandbytes

            if torch.cuda.is_available():
                return bitsandbytes.optim.AdamW8bit(params, lr=lr, betas=(opt.beta1, opt.beta2),
                                                    weight_decay=opt.weight_decay, eps=opt.epsilon)
        except ImportError:
            pass
        # The trainable vectors are a few KB: 8-bit optimizer state saves nothing worth a dependency.
        log.warning("AdamW8bit needs bitsandbytes and a CUDA GPU; using AdamW (the embedding's optimizer state "
                    "is tiny either way)")
    if opt.optimizer_type in ("AdamW", "AdamW8bit"):
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
