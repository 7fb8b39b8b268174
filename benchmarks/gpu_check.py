"""One command that proves the GPU path: real training runs of the SD 1.5 and SDXL architectures
(random weights) at their native sizes, in every precision and memory setting a GPU user picks.

    python benchmarks/gpu_check.py                 # one CUDA GPU; about 5-8 minutes, SD 1.5 @ 512 and SDXL @ 1024
    python benchmarks/gpu_check.py --cpu --tiny    # the same checks on tiny models on a CPU (the test suite runs this)

Each run trains a few steps through tiforge's own `train()` and must end with a finite loss, moved
vectors and an untouched vocabulary. Rows whose prerequisite is missing (xformers, bitsandbytes, CUDA)
are listed as skipped, never counted as passed. The table gives the median step time, the peak GPU
memory (torch.cuda.max_memory_allocated) and the achieved TFLOP/s of the UNet forward+backward
(FLOPs counted by torch's FlopCounterMode, timed separately with the frozen model as trained).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


@dataclass(frozen=True)
class Case:
    family: str  # "sd15" or "sdxl"
    mixed: str  # "fp16" or "bf16"; the frozen weights take the matching dtype
    checkpointing: bool
    attention: str = "sdpa"  # or "xformers"
    optimizer: str = "AdamW"  # or "AdamW8bit"
    validation: bool = False
    cpu_offload: bool = False

    @property
    def label(self) -> str:
        extras = [x for x, on in (("validate", self.validation), ("offload", self.cpu_offload)) if on]
        return " ".join([self.family, self.mixed, "ckpt" if self.checkpointing else "no-ckpt", self.attention,
                         self.optimizer, *extras])


CASES = [
    Case("sd15", "fp16", checkpointing=False),
    Case("sd15", "bf16", checkpointing=True, validation=True, cpu_offload=True),
    Case("sd15", "fp16", checkpointing=False, attention="xformers"),
    Case("sd15", "bf16", checkpointing=False, optimizer="AdamW8bit"),
    Case("sdxl", "bf16", checkpointing=True, validation=True),
    Case("sdxl", "fp16", checkpointing=True, optimizer="AdamW8bit"),
    Case("sdxl", "bf16", checkpointing=False, attention="xformers", validation=True, cpu_offload=True),
]
WEIGHT_DTYPE = {"fp16": "float16", "bf16": "bfloat16"}


@dataclass
class Outcome:
    case: Case
    status: str  # "ok", "FAILED: ...", "skipped: ..."
    step_s: float = math.nan
    peak_gib: float = math.nan
    unet_tflops: float = math.nan
    losses: list[float] = field(default_factory=list)


def skip_reason(case: Case, cuda: bool) -> str | None:
    if case.attention == "xformers" and not (cuda and importlib.util.find_spec("xformers")):
        return "xformers needs CUDA and the xformers package"
    if case.optimizer == "AdamW8bit" and not (cuda and importlib.util.find_spec("bitsandbytes")):
        return "AdamW8bit needs CUDA and the bitsandbytes package"
    return None


def models(tiny: bool, work: Path) -> dict[str, tuple[Path, int]]:
    """family -> (model folder, training resolution)."""
    if tiny:
        from tiforge.toy.tiny import save_tiny_pipeline

        return {"sd15": (save_tiny_pipeline(work / "tiny-sd1", "sd1"), 32),
                "sdxl": (save_tiny_pipeline(work / "tiny-sdxl", "sdxl"), 32)}
    from _models import model_dir

    return {"sd15": (model_dir("sd15"), 512), "sdxl": (model_dir("sdxl"), 1024)}


def config_for(case: Case, model: Path, resolution: int, steps: int, work: Path):
    from PIL import Image

    from tiforge.config.loading import config_from_dict

    data = work / f"data-{resolution}"
    if not data.is_dir():
        data.mkdir(parents=True)
        for i, colour in enumerate([(200, 80, 40), (40, 160, 90)]):
            Image.new("RGB", (resolution, resolution), colour).save(data / f"{i}.png")
    cfg = {
        "type": "SDXL_TEXTUAL_INVERSION" if case.family == "sdxl" else "SD_TEXTUAL_INVERSION",
        "seed": 0, "base_output_dir": str(work / "runs"), "report_to": "none", "model": str(model),
        "placeholder_token": "<check>", "initializer_token": "toy", "num_vectors": 2,
        "max_train_steps": steps, "train_batch_size": 1, "max_grad_norm": 1.0,
        "weight_dtype": WEIGHT_DTYPE[case.mixed], "mixed_precision": case.mixed,
        "gradient_checkpointing": case.checkpointing, "xformers": case.attention == "xformers",
        "optimizer": {"optimizer_type": case.optimizer, "learning_rate": 5e-3},
        "enable_cpu_offload_during_validation": case.cpu_offload,
        "data_loader": {"dataset": {"type": "IMAGE_DIR_DATASET", "dataset_dir": str(data)},
                        "caption_preset": "object", "resolution": resolution, "dataloader_num_workers": 0},
    }
    if case.family == "sdxl" and case.mixed == "fp16":
        cfg["vae_dtype"] = "float32"  # SDXL's VAE overflows in fp16 (kohya's --no_half_vae)
    if case.validation:
        cfg.update(validation_prompts=["a photo of <check>"], num_validation_images_per_prompt=1,
                   num_validation_inference_steps=2)
    return config_from_dict(cfg)


def unet_tflops(parts, case: Case, latent: int, resolution: int, device: torch.device, repeats: int = 3) -> float:
    """Achieved TFLOP/s of one UNet forward+backward to the text conditioning (what TI trains through)."""
    from torch.utils.flop_counter import FlopCounterMode

    unet = parts.unet
    dtype = unet.dtype
    sample = torch.randn(1, unet.config.in_channels, latent, latent, device=device, dtype=dtype)
    states = torch.randn(1, 77, unet.config.cross_attention_dim, device=device, dtype=dtype, requires_grad=True)
    kwargs = {}
    if case.family == "sdxl":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled, device=device, dtype=dtype),
                                       "time_ids": torch.tensor([[resolution] * 2 + [0, 0] + [resolution] * 2],
                                                                device=device, dtype=dtype)}
    timestep = torch.tensor([500], device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=getattr(torch, WEIGHT_DTYPE[case.mixed])):
            out = unet(sample, timestep, encoder_hidden_states=states, **kwargs).sample
        out.float().square().mean().backward()
        states.grad = None

    with FlopCounterMode(display=False) as counter:
        step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return counter.get_total_flops() / statistics.median(times) / 1e12


def run_case(case: Case, model: Path, resolution: int, steps: int, device: torch.device, work: Path) -> Outcome:
    import tiforge.training.model_setup as model_setup
    import tiforge.training.recipe as train_module
    from tiforge.embeddings.files import load_embedding
    from tiforge.training.events import on_steps

    seen: dict = {"initial": {}, "vocab": []}
    real_loader, real_initial = train_module.load_sd_components, model_setup.initial_vectors

    def keep_parts(*args, **kwargs):
        seen["parts"] = parts = real_loader(*args, **kwargs)
        seen["latent"] = resolution // 2 ** (len(parts.vae.config.block_out_channels) - 1)  # VAE freed later
        seen["vocab"] = [enc.get_input_embeddings().weight.detach().to("cpu", copy=True) for _, _, enc in parts.text_encoders]
        return parts

    def keep_initial(*args, **kwargs):
        vectors = real_initial(*args, **kwargs)
        seen["initial"][kwargs.get("part", "")] = vectors.detach().float().cpu().clone()
        return vectors

    losses, seconds = [], []

    def on_step(info) -> None:
        losses.append(info.loss)
        if info.step > 1:  # the first step warms kernels and caches
            seconds.append(info.seconds)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train_module.load_sd_components, model_setup.initial_vectors = keep_parts, keep_initial
    try:
        result = train_module.train(config_for(case, model, resolution, steps, work), progress=False,
                                    listener=on_steps(on_step))
    finally:
        train_module.load_sd_components, model_setup.initial_vectors = real_loader, real_initial
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else math.nan

    parts = seen.pop("parts")
    problems = []
    if not losses or not all(math.isfinite(x) for x in losses):
        problems.append(f"loss not finite: {losses}")
    final = load_embedding(result.embedding_path)
    final_vectors = final.vectors if final.is_sdxl else {"": final.single}
    for (name, start), vectors in zip(seen["initial"].items(), final_vectors.values()):
        if torch.equal(vectors.float(), start):
            problems.append(f"vectors {name or ''} did not move")
    for before, (_, _, enc) in zip(seen["vocab"], parts.text_encoders):
        now = enc.get_input_embeddings().weight.detach().cpu()
        if not torch.equal(now[: before.shape[0]].to(before.dtype), before):
            problems.append("the vocabulary changed")
    if case.validation and not (result.validation_dirs and (result.validation_dirs[-1] / "grid.png").is_file()):
        problems.append("no validation images")
    tflops = unet_tflops(parts, case, seen["latent"], resolution, device)
    del parts
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    status = "ok" if not problems else "FAILED: " + "; ".join(problems)
    return Outcome(case, status, statistics.median(seconds) if seconds else math.nan, peak, tflops, losses)


def table(outcomes: list[Outcome], device: torch.device, resolutions: dict[str, int]) -> str:
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    lines = [f"device: {name}; torch {torch.__version__}",
             f"{'run':<52} {'px':>5} {'s/step':>8} {'peak GiB':>9} {'UNet TFLOP/s':>13}  result"]
    for o in outcomes:
        peak = "-" if math.isnan(o.peak_gib) else f"{o.peak_gib:.2f}"
        lines.append(f"{o.case.label:<52} {resolutions[o.case.family]:>5} {o.step_s:>8.3f} {peak:>9} "
                     f"{o.unet_tflops:>13.3g}  {o.status}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    parser.add_argument("--tiny", action="store_true", help="tiny models at 32 px instead of SD 1.5 / SDXL")
    parser.add_argument("--steps", type=int, default=4, help="training steps per run (the first is not timed)")
    parser.add_argument("--only", default="", help="comma-separated families to run (sd15, sdxl)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.cpu
    if not cuda and not args.cpu:
        parser.error("no CUDA GPU here; pass --cpu (with --tiny, unless you have hours)")
    device = torch.device("cuda" if cuda else "cpu")
    if args.cpu:
        import os

        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # tiforge's train() picks CUDA whenever torch sees it
        torch.cuda.is_available = lambda: False
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="tiforge-gpu-check-"))
    found = models(args.tiny, work)
    families = set(args.only.split(",")) if args.only else set(found)
    outcomes = []
    for case in CASES:
        if case.family not in families:
            continue
        reason = skip_reason(case, cuda)
        if reason:
            outcomes.append(Outcome(case, f"skipped: {reason}"))
            continue
        model, resolution = found[case.family]
        print(f"running {case.label} @ {resolution}px ...", flush=True)
        try:
            outcomes.append(run_case(case, model, resolution, args.steps, device, work))
        except Exception as err:  # one broken setting must not hide the others' results
            outcomes.append(Outcome(case, f"FAILED: {type(err).__name__}: {str(err)[:300]}"))
    print()
    print(table(outcomes, device, {f: r for f, (_, r) in found.items()}))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 1 if any(o.status.startswith("FAILED") for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
