"""Training-step speed and memory of tiforge against the bare cost of textual inversion.

Every TI trainer must run the text encoder forward and backward (to reach the new vectors) and the
UNet forward and backward (to the encoder states). That "bare" cost is measured in the same process,
interleaved step by step with tiforge's real training loop (cached latents, batch 1), so machine
drift hits both alike. The ratio step/bare is tiforge's overhead; target: at most 1.05 at full size.

    python benchmarks/train_step.py                          # tiny and full SD 1.5 architecture
    python benchmarks/train_step.py --sizes tiny,tiny-xl     # seconds
    python benchmarks/train_step.py --sizes sdxl             # full SDXL architecture (~16 GiB in fp32)
    python benchmarks/train_step.py --dtypes bf16            # frozen weights in bfloat16 only (default: fp32,bf16)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESOLUTION = {"tiny": 64, "tiny-xl": 64, "sd15": 256, "sdxl": 256}
SDXL_SIZES = ("tiny-xl", "sdxl")
WEIGHT_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}  # tiforge's weight_dtype: the frozen modules' dtype


def _peak_memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class BareStep:
    """Text encoder(s) fwd+bwd (to the input embeddings) + UNet fwd+bwd, on the trainer's own frozen
    modules (one copy in memory); written with the raw diffusers/transformers calls, not tiforge's."""

    def __init__(self, parts, latent_size: int, resolution: int, device: torch.device):
        self.encoders = [parts.text_encoder] + ([parts.text_encoder_2] if parts.text_encoder_2 is not None else [])
        self.unet, self.sched = parts.unet, parts.noise_scheduler
        self.ids = []
        for encoder, tokenizer in zip(self.encoders, (parts.tokenizer, parts.tokenizer_2)):
            self.ids.append(tokenizer("a photo of a toy", padding="max_length", max_length=77,
                                      return_tensors="pt").input_ids.to(device))
        dtype = parts.unet.dtype  # the trainer's weight dtype: its latents and size ids come in it too
        self.latents = torch.randn(1, 4, latent_size, latent_size, device=device).to(dtype)
        self.time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], device=device).to(dtype)
        self.device = device

    def _condition(self) -> tuple[torch.Tensor, dict]:
        if len(self.encoders) == 1:
            return self.encoders[0](self.ids[0])[0], {}
        outs = [enc(ids, output_hidden_states=True) for enc, ids in zip(self.encoders, self.ids)]
        hidden = torch.cat([o.hidden_states[-2] for o in outs], dim=-1)
        return hidden, {"added_cond_kwargs": {"text_embeds": outs[-1][0], "time_ids": self.time_ids}}

    def __call__(self) -> float:
        # Gradients must flow back through the whole text encoder, as in training, but no further;
        # the hooks come off again because the trainer shares these modules.
        hooks = [enc.get_input_embeddings().register_forward_hook(lambda mod, inp, out: out.detach().requires_grad_(True))
                 for enc in self.encoders]
        try:
            return self._timed()
        finally:
            for hook in hooks:
                hook.remove()

    def _timed(self) -> float:
        start = time.perf_counter()
        hidden, extra = self._condition()
        noise = torch.randn_like(self.latents)
        t = torch.randint(0, 1000, (1,), device=self.device)
        pred = self.unet(self.sched.add_noise(self.latents, noise, t), t, hidden, **extra).sample
        torch.nn.functional.mse_loss(pred.float(), noise.float()).backward()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def worker(size: str, steps: int, dtype: str = "fp32") -> dict:
    from PIL import Image

    import tiforge.training.recipe as train_module
    from _models import model_dir
    from tiforge.config.loading import config_from_dict
    from tiforge.training.events import on_steps
    from tiforge.training.recipe import train

    model = str(model_dir(size))
    res = RESOLUTION[size]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = Path(tempfile.mkdtemp()) / "img"
    data.mkdir()
    Image.new("RGB", (res, res), (200, 80, 40)).save(data / "a.png")
    cfg = config_from_dict({
        "type": "SDXL_TEXTUAL_INVERSION" if size in SDXL_SIZES else "SD_TEXTUAL_INVERSION", "seed": 0, "base_output_dir": tempfile.mkdtemp(), "report_to": "none", "model": model,
        "placeholder_token": "<bench>", "initializer_token": "toy", "num_vectors": 4,
        "max_train_steps": steps + 1, "train_batch_size": 1, "cache_vae_outputs": True,
        "weight_dtype": WEIGHT_DTYPES[dtype],
        "data_loader": {"dataset": {"type": "IMAGE_DIR_DATASET", "dataset_dir": str(data)},
                        "caption_preset": "object", "resolution": res},
    })
    trainer_times, bare_times, state = [], [], {}
    real_loader = train_module.load_sd_components

    def keep_parts(*args, **kwargs):
        state["parts"] = parts = real_loader(*args, **kwargs)
        state["latent_size"] = res // 2 ** (len(parts.vae.config.block_out_channels) - 1)  # the VAE goes after caching
        return parts

    train_module.load_sd_components = keep_parts

    def on_step(info):
        if info.step == 1:  # the first step reads weights and warms caches: not counted
            state["peak"] = _peak_memory_gib()
            state["bare"] = BareStep(state["parts"], state["latent_size"], res, device)
            state["bare"]()  # its own warm-up
            return
        trainer_times.append(info.seconds)
        bare_times.append(state["bare"]())

    train(cfg, progress=False, listener=on_steps(on_step))
    step, bare = statistics.median(trainer_times), statistics.median(bare_times)
    return {"size": size, "dtype": dtype, "resolution": res, "device": device.type, "steps": steps, "step_s": step, "bare_s": bare,
            "ratio": step / bare, "peak_gib": state["peak"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,tiny-xl,sd15", help="comma-separated: tiny, tiny-xl, sd15, sdxl")
    parser.add_argument("--steps", type=int, default=None, help="measured steps (default 20 tiny, 5 full size)")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated frozen-weight dtypes: fp32, bf16")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.dtype)))
        return
    rows = []
    for size in args.sizes.split(","):
        steps = args.steps or (20 if size.startswith("tiny") else 5)
        for dtype in args.dtypes.split(","):
            # One process per size and dtype, so peak memory is that model's alone.
            out = subprocess.run([sys.executable, __file__, "--worker", size, "--steps", str(steps), "--dtype", dtype],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{size} {dtype} failed:\n{out.stderr[-3000:]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print()
    print(f"{'model':<8} {'dtype':>5} {'px':>5} {'device':>6} {'steps':>5} {'step s':>9} {'bare s':>9} {'step/bare':>9} {'peak GiB':>9}")
    for r in rows:
        print(f"{r['size']:<8} {r['dtype']:>5} {r['resolution']:>5} {r['device']:>6} {r['steps']:>5} {r['step_s']:>9.4f} "
              f"{r['bare_s']:>9.4f} {r['ratio']:>9.3f} {r['peak_gib']:>9.2f}")
    print("\nbare = text encoder fwd+bwd + UNet fwd+bwd with frozen weights (the floor for any TI trainer);"
          "\nstep = tiforge's full training step (noise, loss, Min-SNR, optimizer, scheduler, logging); medians.")


if __name__ == "__main__":
    main()
