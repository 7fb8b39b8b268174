"""Export a diffusers SD 1.x/2.x or SDXL pipeline as one original-layout ("LDM") checkpoint file,
the kind A1111, ComfyUI and civitai users carry around.

The mapping follows the model's own block counts, so it also serves the tiny test pipelines, for
which diffusers' conversion script (which assumes the full four-block layout) does not work.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

_RESNET_TO_LDM = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
]
_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL's pooled-text + size/crop embedding
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VAE_ATTN = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def _resnet(rest: str) -> str:
    for a, b in _RESNET_TO_LDM:
        if rest.startswith(a + "."):
            return b + rest[len(a) :]
    return rest


def _unet_key(key: str, per_block: int, up_has_attention: list[bool]) -> str:
    head, _, param = key.rpartition(".")
    if head in _UNET_FIXED:
        return f"{_UNET_FIXED[head]}.{param}"
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        idx = 1 + b * (per_block + 1) + j
        return f"input_blocks.{idx}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{idx}.1.{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{1 + int(m[1]) * (per_block + 1) + per_block}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.match(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        idx = b * (per_block + 1) + j
        return f"output_blocks.{idx}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{idx}.1.{rest}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        b = int(m[1])
        slot = 2 if up_has_attention[b] else 1
        return f"output_blocks.{b * (per_block + 1) + per_block}.{slot}.conv.{m[2]}"
    raise KeyError(f"no original-layout name for UNet key {key}")


def _vae_key(key: str, num_blocks: int) -> tuple[str, bool]:
    """Returns the LDM key and whether the tensor is an attention projection stored as a 1x1 conv."""
    key = key.replace("conv_norm_out", "norm_out")
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}", False
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        rest = m[2]
        for a, b in _VAE_ATTN:
            if rest.startswith(a + "."):
                return f"{m[1]}.mid.attn_1.{b}{rest[len(a):]}", b != "norm" and rest.endswith("weight")
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}", False
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.{m[2]}", False
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"decoder.up.{num_blocks - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}", False
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
        return f"decoder.up.{num_blocks - 1 - int(m[1])}.upsample.{m[2]}", False
    return key, False


_OPEN_CLIP_LAYER = [
    ("self_attn.out_proj.", "attn.out_proj."),
    ("layer_norm1.", "ln_1."),
    ("layer_norm2.", "ln_2."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
]


def _open_clip_state_dict(text_encoder) -> dict[str, torch.Tensor]:
    """OpenCLIP's own names (SD 2.x's encoder, SDXL's clip_g): fused q/k/v, transposed projection."""
    sd = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    out = {
        "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
        "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": sd.pop("final_layer_norm.weight"),
        "ln_final.bias": sd.pop("final_layer_norm.bias"),
    }
    if "text_projection.weight" in sd:
        out["text_projection"] = sd.pop("text_projection.weight").T
    sd.pop("embeddings.position_ids", None)
    for i in range(text_encoder.config.num_hidden_layers):
        pre = f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            qkv = [sd.pop(f"{pre}self_attn.{p}_proj.{kind}") for p in ("q", "k", "v")]
            out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(qkv)
        for key in [k for k in sd if k.startswith(pre)]:
            rest = key[len(pre):]
            for ours, theirs in _OPEN_CLIP_LAYER:
                if rest.startswith(ours):
                    out[f"transformer.resblocks.{i}.{theirs}{rest[len(ours):]}"] = sd.pop(key)
    if sd:
        raise KeyError(f"no original-layout name for text-encoder keys {sorted(sd)[:5]}")
    return out


def _clip_state_dict(text_encoder) -> dict[str, torch.Tensor]:
    return {"text_model." + k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}


def pipeline_to_ldm_state_dict(pipe) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    ucfg = pipe.unet.config
    up_has_attention = ["CrossAttn" in t for t in ucfg.up_block_types]
    for key, value in pipe.unet.state_dict().items():
        out["model.diffusion_model." + _unet_key(key, ucfg.layers_per_block, up_has_attention)] = value
    num_blocks = len(pipe.vae.config.down_block_types)
    for key, value in pipe.vae.state_dict().items():
        ldm, is_proj = _vae_key(key, num_blocks)
        out["first_stage_model." + ldm] = value[:, :, None, None] if is_proj and value.ndim == 2 else value
    if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL
        text = {"conditioner.embedders.0.transformer.": _clip_state_dict(pipe.text_encoder),
                "conditioner.embedders.1.model.": _open_clip_state_dict(pipe.text_encoder_2)}
    elif pipe.text_encoder.config.hidden_act == "gelu":  # SD 2.x: OpenCLIP ViT-H
        text = {"cond_stage_model.model.": _open_clip_state_dict(pipe.text_encoder)}
    else:
        text = {"cond_stage_model.transformer.": _clip_state_dict(pipe.text_encoder)}
    for prefix, tensors in text.items():
        out.update({prefix + k: v for k, v in tensors.items()})
    return {k: v.contiguous() for k, v in out.items()}


def save_single_file(pipe, path: str | Path) -> Path:
    from safetensors.torch import save_file

    from tiforge.atomic import atomic_write

    state = pipeline_to_ldm_state_dict(pipe)
    return atomic_write(path, lambda tmp: save_file(state, str(tmp)))
