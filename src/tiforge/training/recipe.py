"""The textual-inversion training recipe, top to bottom.

    setup:  config -> run folder -> accelerator -> data (checked) -> frozen model -> placeholder
            vectors -> dataset and latents -> optimizer & schedule -> (resume)
    train:  for each batch: loss, backward, update; then log, save, validate, stop when asked
    finish: final embedding -> install / validate / upload

SD 1.x/2.x and SDXL share every line; what differs (one text encoder or two, SDXL's pooled and
size/crop conditioning) lives in `model.text_conditioning.PromptEncoder`. The run's state lives on
the `Recipe` object; what it tells the outside world goes out as `training.events`.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tiforge.atomic import atomic_write_text
from tiforge.config.schema import TrainingConfig
from tiforge.config.loading import dump_config
from tiforge.data.checks import apply_policy, scan_records
from tiforge.data.dataset import TextualInversionDataset, auto_num_workers, make_dataloader
from tiforge.data.captions import Captioner, check_captions_hold_placeholder
from tiforge.data.latent_cache import cache_vae_outputs, default_cache_dir, plan_caching, release_vae
from tiforge.data.regularization import loss_weights
from tiforge.data.sources import apply_kohya_dataset_settings, find_records
from tiforge.embeddings.convert import install_for_invokeai
from tiforge.embeddings.hub import push_embedding
from tiforge.model.loading import load_sd_components
from tiforge.model.loss import LossSettings, NoiseSource, denoising_loss, sample_latents
from tiforge.model.noise import NoiseSettings, draw_training_noise
from tiforge.model.placeholders import Placeholder
from tiforge.model.text_conditioning import conditioning_metadata, unet_conditioning
from tiforge.training import events
from tiforge.training.acceleration import unet_runner
from tiforge.training.checkpoints import capture_rng, load_training_state, restore_rng
from tiforge.training.interrupts import StopRequests, TrainingStopped, resume_command
from tiforge.training.machine import fit_to_machine
from tiforge.training.model_setup import DTYPES, prepare_frozen_model, starting_vectors
from tiforge.training.lr_schedules import build_lr_scheduler
from tiforge.training.optimizers import (build_optimizer, enter_train_mode, resolve_optimizer, scaled_learning_rate,
                                        with_averaged_weights)
from tiforge.training.output_layout import diffusers_concept_files, plan_outputs, run_dir_of_checkpoint
from tiforge.training.precision import fp16_autocast_on_cpu, guarded_update
from tiforge.training.processes import agreed, check_ranks_agree, make_accelerator, new_run_dir
from tiforge.training.retention import prune_old_saves
from tiforge.training.resume import check_resumable, remove_stale_temporaries, resume_point
from tiforge.training.progress import TrainingBar, progress_bar
from tiforge.training.run_folders import check_output_space, estimate_output_bytes, log_to_run_dir
from tiforge.training.saving import RunFiles
from tiforge.training.sampling import SamplePictures
from tiforge.training.run_guard import RunFolderLock, RunRecord, record_failure
from tiforge.training.start_checks import check_caption_lengths, token_window, warn_nothing_left, warn_vector_count
from tiforge.training.validation import validate_with_config
from tiforge.training.vector_rules import build_vector_rules

log = logging.getLogger("tiforge")


@dataclass
class TrainResult:
    run_dir: Path
    embedding_path: Path
    global_step: int
    final_loss: float | None
    validation_dirs: list[Path] = field(default_factory=list)
    checkpoint_dirs: list[Path] = field(default_factory=list)


def train(config: TrainingConfig, progress: bool = True, listener: events.Listener | None = None,
          stop_event: threading.Event | None = None) -> TrainResult:
    """Train one embedding. `listener` hears every event (steps, files written, the end); setting
    `stop_event` stops after the current step as Ctrl-C does (checkpoint, embedding, TrainingStopped)."""
    bar = TrainingBar() if progress else None
    try:
        return Recipe(config, progress, events.fan_out(bar, listener), stop_event).run()
    finally:
        if bar is not None:
            bar.close()


class Recipe:
    def __init__(self, config: TrainingConfig, progress: bool, listener: events.Listener,
                 stop_event: threading.Event | None):
        self.config = apply_kohya_dataset_settings(fit_to_machine(config, torch.cuda.is_available()))
        self.progress = progress
        self.emit = listener
        self.stop_event = stop_event
        self.placeholders: list[Placeholder] = []  # one today; the recipe holds a list for several
        self.global_step = 0
        self.record = RunRecord()  # what the clean-up after a failure needs to know
        self.noise_settings, self.loss_settings = NoiseSettings.of(self.config), LossSettings.of(self.config)

    def run(self) -> TrainResult:
        """A run that fails writes why into its train.log, and a new run that fails before its first
        step leaves no folder behind."""
        forward = events.WarningsToEvents(self.emit)
        logging.getLogger("tiforge").addHandler(forward)
        try:
            self.setup()
            with StopRequests() as self.stop_requests:
                self.train()
            self.finish()
            return self.result
        except BaseException as err:
            record_failure(self.record, err)
            raise
        finally:
            logging.getLogger("tiforge").removeHandler(forward)
            if self.record.lock is not None:
                self.record.lock.release()

    # ------------------------------------------------------------------------------------ setup

    def setup(self) -> None:
        config = self.config
        if config.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        resolve_optimizer(config, config.learning_rate)  # a missing optimizer package, before anything loads
        self._setup_run_folder_and_accelerator()
        self._setup_data_check()
        self._setup_model()
        self._setup_placeholders()
        self._setup_dataset()
        self._setup_optimizer()
        self._restore_position()
        enter_train_mode(self.optimizer)  # schedule-free optimizers (checkpoints hold their averaged mode)
        self._write_run_config()

    def _setup_run_folder_and_accelerator(self) -> None:
        from accelerate.utils import set_seed

        config = self.config
        self.resume_from = resume_point(config)
        self.state = load_training_state(self.resume_from) if self.resume_from else None
        flat = config.output_layout != "run_folders"
        made_here = not flat or not Path(config.base_output_dir).expanduser().exists()
        self.run_dir = run_dir_of_checkpoint(self.resume_from) if self.resume_from else new_run_dir(config)
        # Only a folder this run made may be removed again after a failure: a timestamped run folder,
        # or a flat layout's output_dir that did not exist before; never a user's existing folder.
        self.record.run_dir = self.run_dir
        self.record.new_run = self.state is None and made_here
        self.accelerator = make_accelerator(config, self.run_dir)
        fp16_autocast_on_cpu(self.accelerator)
        self.main = self.accelerator.is_main_process
        self.device = self.accelerator.device
        if self.main:
            self.record.lock = RunFolderLock(self.run_dir).acquire()
            log_to_run_dir(self.run_dir)
        if self.state:
            check_resumable(self.state, config, self.resume_from)
            log.info("resuming from %s (step %d)", self.resume_from, self.state["global_step"])
            if self.main:
                remove_stale_temporaries(self.run_dir)
        # Without a seed the run is still made of seeded parts, so that it can be resumed exactly.
        self.seed = self.state["seed"] if self.state else config.seed if config.seed is not None \
            else secrets.randbelow(2**31)
        set_seed(self.seed)
        self.noise = NoiseSource(self.seed, self.device, self.accelerator.num_processes,
                                 self.accelerator.process_index)
        self.weight_dtype = DTYPES[config.weight_dtype]

    def _setup_data_check(self) -> None:
        """Every file is read before any model loads: bad files are named, then skipped or refused."""
        config, dl = self.config, self.config.data_loader
        records = find_records(dl, config.use_masks, config.prior_loss_weight)
        self.scan = scan_records(records, dl.height_width, config.use_masks,
                                 progress=progress_bar("checking data", self.main and self.progress))
        self.records = apply_policy(self.scan, dl.on_bad_image)
        check_captions_hold_placeholder(self.records, config.placeholder_token, dl.uses_templates)
        self.cache_plan = plan_caching(config, self.records)

    def _setup_model(self) -> None:
        config = self.config
        log.info("loading model %s", config.model)
        vae_dtype = DTYPES[config.vae_dtype] if getattr(config, "vae_dtype", None) else None
        self.parts = load_sd_components(
            config.model, config.hf_variant, config.single_file_config, self.weight_dtype, sdxl=config.is_sdxl,
            vae_model=getattr(config, "vae_model", None), vae_dtype=vae_dtype, progress=self.main and self.progress)
        self.prompt_encoder, self.prediction_type = prepare_frozen_model(self.parts, config, self.device)

    def _setup_placeholders(self) -> None:
        """One set of vectors per text encoder: the only trainable parameters."""
        vectors = starting_vectors(self.config, self.parts, self.state)
        self.num_vectors = next(iter(vectors.values())).shape[0]
        if not self.state:
            warn_vector_count(self.config, self.num_vectors)
        placeholder = self.prompt_encoder.add_placeholder(self.config.placeholder_token, vectors)
        self.placeholders = [placeholder]
        self.trainable = self.prompt_encoder.trainable()
        log.info("placeholder %r -> %d vector(s), token ids %s", placeholder.token, self.num_vectors,
                 list(placeholder.ids))

    def _setup_dataset(self) -> None:
        config, dl, parts = self.config, self.config.data_loader, self.parts
        self.dataset = TextualInversionDataset(self.records, dl, Captioner(dl, self.placeholders[0]),
                                               self.prompt_encoder.tokenizers, seed=self.seed,
                                               sizes=self.scan.sizes, use_masks=config.use_masks,
                                               max_token_length=config.max_token_length)
        check_caption_lengths(self.dataset, self.prompt_encoder.tokenizers[0], self.placeholders[0].ids,
                              token_window(config.max_token_length))
        self.scaling_factor = parts.vae.config.scaling_factor
        log.info("%s", self.cache_plan.reason)
        if self.cache_plan.cache:
            disk = (config.latent_cache_dir or default_cache_dir()) if config.cache_vae_outputs_to_disk else None
            cache_vae_outputs(self.dataset, parts.vae, self.device, parts.vae.dtype, disk_dir=disk,
                              progress=progress_bar("caching latents", self.main and self.progress))
            # Only validation and sample pictures need the VAE again, and only its decoder.
            release_vae(parts, keep_decoder=bool(config.validation_prompts or config.sample_prompts))
        workers = auto_num_workers(config, cached=self.cache_plan.cache)
        self.dataloader = make_dataloader(self.dataset, config.train_batch_size, workers)
        self.sampler = self.dataloader.batch_sampler

    def _setup_optimizer(self) -> None:
        config, accelerator = self.config, self.accelerator
        processes = accelerator.num_processes
        # accelerate deals the batches out to the processes in turn
        self.batches_per_epoch = math.ceil(self.sampler.batches_per_epoch() / processes)
        self.updates_per_epoch = math.ceil(self.batches_per_epoch / config.gradient_accumulation_steps)
        self.max_steps = config.max_train_steps or config.max_train_epochs * self.updates_per_epoch
        self.num_epochs = math.ceil(self.max_steps / self.updates_per_epoch)
        self.lr = scaled_learning_rate(config, processes)
        optimizer = build_optimizer(config, self.trainable, self.lr)
        lr_scheduler = build_lr_scheduler(config, optimizer, self.max_steps, processes)
        self.text_model, self.optimizer, self.dataloader, self.lr_scheduler = accelerator.prepare(
            self.prompt_encoder, optimizer, self.dataloader, lr_scheduler
        )
        self.vector_rules = build_vector_rules(config, self.prompt_encoder, self.optimizer, self.parts,
                                               resumed=bool(self.state))

    def _restore_position(self) -> None:
        """Step 0, or the checkpoint's position with every state that decides what comes next."""
        self.start_epoch, self.skip_batches = 1, 0
        state = self.state
        if not state:
            return
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.accelerator.scaler is not None and state.get("scaler"):
            self.accelerator.scaler.load_state_dict(state["scaler"])
        self.noise.load_state_dict(state["noise"])
        restore_rng(state["rng"])
        self.global_step, self.start_epoch, self.skip_batches = state["global_step"], state["epoch"], \
            state["batches_in_epoch"]
        if self.skip_batches >= self.batches_per_epoch:
            self.start_epoch, self.skip_batches = self.start_epoch + 1, 0
        warn_nothing_left(self.resume_from, self.global_step, self.max_steps)

    def _write_run_config(self) -> None:
        config = self.config
        self.resolved = config.model_copy(update={"num_vectors": self.num_vectors, "seed": self.seed,
                                                  "resume_from_checkpoint": None})
        self.resolved_yaml = dump_config(self.resolved)
        if self.main:
            check_output_space(self.run_dir, estimate_output_bytes(
                config, self.num_vectors, sum(self.prompt_encoder.widths.values()), self.max_steps,
                self.updates_per_epoch))
            if not self.state:
                atomic_write_text(self.run_dir / "config.yaml", self.resolved_yaml)
            tracker_config = {k: v for k, v in self.resolved.model_dump(mode="json").items()
                              if isinstance(v, (int, float, str, bool))}
            self.accelerator.init_trackers("tiforge", config=tracker_config)
        log.info(
            "%d images, batch %d x %d accumulation x %d process(es), %d update(s) per epoch, %d steps over %d "
            "epoch(s), lr %g", len(self.dataset), config.train_batch_size, config.gradient_accumulation_steps,
            self.accelerator.num_processes, self.updates_per_epoch, self.max_steps, self.num_epochs, self.lr,
        )
        self.plan = plan_outputs(config, self.placeholders[0].token, self.run_dir)
        self.result = TrainResult(run_dir=self.run_dir, embedding_path=self.plan.final,
                                  global_step=self.global_step, final_loss=None)
        metadata = {"tiforge.base_model": config.model, "tiforge.family": self.parts.family,
                    **conditioning_metadata(self.prompt_encoder)}
        self.files = RunFiles(config, self.plan, self.run_dir, self.placeholders[0].token, metadata,
                              self.resolved_yaml, self.progress)
        self.samples = SamplePictures(config, self.run_dir, self.seed)

    # ------------------------------------------------------------------------------------ train

    def train(self) -> None:
        config, accelerator = self.config, self.accelerator
        if self.main:
            self.emit(events.Started(str(self.run_dir), self.global_step, self.max_steps))
        self.window_loss, self.window_batches = torch.zeros((), device=self.device), 0  # over accumulation
        self.nonfinite_in_a_row = 0
        self.run_unet = unet_runner(config, self.parts, self.device.type, self.max_steps)
        if self.global_step == 0 and self.samples.at_step(0):
            self.epoch, self.batches_in_epoch = self.start_epoch, 0  # the position a stop while sampling saves
            self.sample(None)
        step_started = time.perf_counter()
        for epoch in range(self.start_epoch, self.num_epochs + 1):
            if self.global_step >= self.max_steps:
                break
            skip = self.skip_batches if epoch == self.start_epoch else 0
            self.sampler.begin(epoch, skip * accelerator.num_processes)
            accelerator.step = skip  # accelerate's position in the accumulation window
            self.epoch, self.batches_in_epoch = epoch, skip
            self.text_model.train(config.gradient_checkpointing)
            for batch in self.dataloader:
                self.batches_in_epoch += 1
                with accelerator.accumulate(self.text_model), accelerator.autocast():
                    self.window_loss += self.training_step(batch)
                    self.window_batches += 1
                    finite, grad_norm = self.update()
                if not accelerator.sync_gradients:
                    continue
                if not finite:
                    self.on_nonfinite_step()
                    continue
                self.nonfinite_in_a_row = 0
                self.global_step += 1
                self.log_step(epoch, grad_norm, time.perf_counter() - step_started)
                self.after_step()
                if self.global_step >= self.max_steps:
                    break
                step_started = time.perf_counter()
            self.after_epoch(epoch)
            step_started = time.perf_counter()
        self.result.global_step = self.global_step

    def training_step(self, batch: dict) -> torch.Tensor:
        """One batch: latents, noise, the denoising loss through the frozen UNet, backward into the
        placeholder vectors. Returns the detached loss."""
        parts, device = self.parts, self.device
        if "latent_params" in batch:
            params = batch["latent_params"].to(device)
        else:
            with torch.no_grad():
                pixels = batch["pixel_values"].to(device, parts.vae.dtype)
                params = parts.vae.encode(pixels).latent_dist.parameters
        mean_shape = (params.shape[0], params.shape[1] // 2, *params.shape[2:])
        latents = sample_latents(params.float(), self.scaling_factor, self.noise.randn(mean_shape)).to(self.weight_dtype)
        hidden, unet_kwargs = unet_conditioning(self.text_model, batch["input_ids"], batch)
        noise, input_noise, timesteps = draw_training_noise(self.noise, latents, self.noise_settings,
                                                            parts.noise_scheduler.config.num_train_timesteps)
        loss = denoising_loss(
            self.run_unet, parts.noise_scheduler, latents, hidden,
            prediction_type=self.prediction_type, min_snr_gamma=self.config.min_snr_gamma,
            noise=noise, timesteps=timesteps, input_noise=input_noise, settings=self.loss_settings,
            unet_kwargs=unet_kwargs, mask=batch["mask"].to(device) if "mask" in batch else None,
            reg_weights=loss_weights(batch, self.config.prior_loss_weight),
        )
        self.accelerator.backward(loss)
        return loss.detach().float()

    def update(self) -> tuple[bool, torch.Tensor | None]:
        """At the end of an accumulation window: check, clip and apply the gradient (unscaled first
        under fp16); a step that is skipped or overflows comes back as not finite. Returns (finite,
        gradient norm)."""
        accelerator, optimizer = self.accelerator, self.optimizer
        finite, grad_norm = True, None
        if accelerator.sync_gradients:
            # Gradients are averaged over processes by now, so every process decides alike.
            outcome = guarded_update(self.trainable, max_grad_norm=self.config.max_grad_norm,
                                     scaler=accelerator.scaler, unscale=accelerator.unscale_gradients,
                                     step=self.vector_rules.wrap_step(optimizer.step),
                                     step_was_skipped=lambda: optimizer.step_was_skipped)
            finite, grad_norm = outcome.finite, outcome.grad_norm
            if finite:
                self.vector_rules.after_step()  # at the rate this step used, before the schedule moves on
                self.lr_scheduler.step()
        else:  # accelerate only counts these until the window is full
            optimizer.step()
            self.lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return finite, grad_norm

    def on_nonfinite_step(self) -> None:
        self.nonfinite_in_a_row += 1
        log.warning("non-finite gradient at step %d: step skipped (%d in a row)", self.global_step + 1,
                    self.nonfinite_in_a_row)
        self.window_loss.zero_()
        self.window_batches = 0
        if self.nonfinite_in_a_row >= self.config.max_nonfinite_steps:
            self.stop(f"Training stopped: {self.nonfinite_in_a_row} steps in a row had NaN/inf gradients "
                      "(max_nonfinite_steps). Lower the learning rate, or use bf16/fp32 instead of fp16.", 3)

    def log_step(self, epoch: int, grad_norm: torch.Tensor | None, seconds: float) -> None:
        self.record.steps = self.global_step
        self.result.final_loss = (self.window_loss / self.window_batches).item()
        self.window_loss.zero_()
        self.window_batches = 0
        logs = {"loss": self.result.final_loss, "lr": self.lr_scheduler.get_last_lr()[0]}
        if grad_norm is not None:
            logs["grad_norm"] = grad_norm.item()
        self.accelerator.log({**logs, **self.prompt_encoder.vector_norms()}, step=self.global_step)
        if self.main:
            self.emit(events.Step(self.global_step, self.max_steps, epoch, logs["loss"], logs["lr"], seconds,
                                  str(self.run_dir)))

    def after_step(self) -> None:
        config, step = self.config, self.global_step
        self.stop_if_requested()
        if config.save_embedding_every_n_steps and step % config.save_embedding_every_n_steps == 0:
            self.save_snapshot("step", step)
        if config.save_every_n_steps and step % config.save_every_n_steps == 0 and step < self.max_steps:
            self.save_periodic("step", step)
        if config.validate_every_n_steps and step % config.validate_every_n_steps == 0 and step < self.max_steps:
            self.validate(f"step_{step:08d}")
        if self.samples.at_step(step):
            self.sample(None)

    def after_epoch(self, epoch: int) -> None:
        config, last_epoch = self.config, self.global_step >= self.max_steps
        if config.save_every_n_epochs and epoch % config.save_every_n_epochs == 0 and not last_epoch:
            self.save_periodic("epoch", epoch)
        if config.validate_every_n_epochs and epoch % config.validate_every_n_epochs == 0 and not last_epoch:
            self.validate(f"epoch_{epoch:04d}")
        if self.samples.at_epoch(epoch):
            self.sample(epoch)

    # ------------------------------------------------------------------------ saving, validating

    def current_vectors(self) -> torch.Tensor | dict[str, torch.Tensor]:
        return self.accelerator.unwrap_model(self.text_model).file_vectors()

    @with_averaged_weights
    def save_embedding(self) -> None:
        if self.main:
            path = self.files.embedding(self.current_vectors(), self.global_step)
            log.info("embedding saved: %s", path)
            self.emit(events.FileWritten("embedding", str(path)))
        self.accelerator.wait_for_everyone()

    def training_state(self) -> dict:
        """Everything a resumed run needs to continue exactly where this one is."""
        scaler = self.accelerator.scaler
        return {
            "format": 2, "global_step": self.global_step, "epoch": self.epoch,
            "batches_in_epoch": self.batches_in_epoch, "seed": self.seed,
            "vectors": {k: v.cpu().float() for k, v in self.prompt_encoder.vectors().items()},
            "optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "noise": self.noise.state_dict().cpu(), "rng": capture_rng(),
            "config": self.resolved.model_dump(mode="json"),
        }

    @with_averaged_weights
    def save_checkpoint(self, kind: str, index: int) -> Path | None:
        path = None
        if self.main:
            path = self.files.checkpoint(kind, index, self.current_vectors(), self.global_step, self.training_state())
            self.result.checkpoint_dirs.append(path)
            log.info("checkpoint saved: %s", path)
            self.emit(events.FileWritten("checkpoint", str(path)))
        self.accelerator.wait_for_everyone()
        return path

    def save_periodic(self, kind: str, index: int) -> None:
        """A scheduled save: a checkpoint, or only the embedding without save_state (kohya's way); then
        kohya's save_last_n_* retention."""
        if self.config.save_state:
            self.save_checkpoint(kind, index)
        else:
            self.save_snapshot(kind, index)
        if self.main:
            prune_old_saves(self.plan, self.config, kind, index)

    @with_averaged_weights
    def save_snapshot(self, kind: str, index: int) -> None:
        if self.main:
            self.files.snapshot(kind, index, self.current_vectors(), self.global_step)

    @with_averaged_weights
    def validate(self, label: str) -> None:
        if self.main and self.config.validation_prompts:
            out_dir = self.run_dir / "validation" / label
            validate_with_config(self.config, self.parts, self.accelerator.unwrap_model(self.text_model), out_dir,
                                 self.seed, self.device, self.accelerator.autocast, self.accelerator.trackers,
                                 self.global_step, self.progress)
            self.result.validation_dirs.append(out_dir)
            log.info("validation images: %s", out_dir)
            self.emit(events.FileWritten("validation", str(out_dir)))
        self.accelerator.wait_for_everyone()

    def sample(self, epoch: int | None) -> None:
        if self.main:
            for path in self.samples.generate(self.parts, self.accelerator.unwrap_model(self.text_model), self.device,
                                              self.global_step, epoch, self.accelerator.autocast, self.stop_wanted):
                self.emit(events.FileWritten("sample", str(path)))
        self.accelerator.wait_for_everyone()
        self.stop_if_requested()  # a stop asked for while sampling: not after one more training step

    def stop_wanted(self) -> bool:
        return self.stop_requests.requested or (self.stop_event is not None and self.stop_event.is_set())

    def stop_if_requested(self) -> None:
        if agreed(self.accelerator, self.stop_wanted()):
            self.stop("Training interrupted.", self.stop_requests.exit_code)

    def stop(self, message: str, exit_code: int) -> None:
        """Save what was learned (a checkpoint and the embedding) and leave the loop."""
        path = self.save_checkpoint("step", self.global_step)
        self.save_embedding()
        self.accelerator.end_training()
        raise TrainingStopped(f"{message}\nSaved step {self.global_step}: {self.result.embedding_path}\n"
                              f"To go on: {resume_command(path, self.run_dir)}", exit_code)

    # ----------------------------------------------------------------------------------- finish

    def finish(self) -> None:
        config, main = self.config, self.main
        check_ranks_agree(self.accelerator, torch.cat([v.flatten() for v in self.prompt_encoder.vectors().values()]))
        self.save_embedding()
        # kohya's script ends with `if save_state or save_state_on_train_end`: its users expect <name>-state/
        if config.save_state_on_train_end or (self.plan.layout == "kohya" and config.save_state):
            self.save_checkpoint("end", self.global_step)
        if main and self.plan.layout in ("diffusers", "invokeai"):
            for path, text in diffusers_concept_files(self.run_dir, self.placeholders[0].token,
                                                      config.data_loader.caption_preset):
                atomic_write_text(path, text + "\n")
        if main and config.install_embeddings_root:
            installed = install_for_invokeai(self.result.embedding_path, config.install_embeddings_root,
                                             self.placeholders[0].token)
            log.info("installed for InvokeAI: %s", installed)
        self.validate("final")
        self.accelerator.end_training()
        if main and config.push_to_hub:
            repo = config.hub_model_id or Path(config.base_output_dir).expanduser().resolve().name
            log.info("uploaded to the hub: %s", push_embedding(self.result.embedding_path, repo, config.hub_token))
        if main:
            self.emit(events.Finished(str(self.run_dir), str(self.result.embedding_path), self.global_step,
                                      self.result.final_loss))

