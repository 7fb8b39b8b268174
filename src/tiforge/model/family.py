"""Which Stable Diffusion family a loaded SD-architecture model belongs to, read from its own configs.

SD 1.x conditions on OpenAI's CLIP ViT-L (activation quick_gelu) and its UNet projects attention
inputs with 1x1 convolutions; SD 2.x conditions on OpenCLIP ViT-H (activation gelu) and its UNet
uses linear projections. Both marks hold at any width (the tiny test models keep them), where a
width table (768 / 1024) only knows the full-size models.
"""

from __future__ import annotations

import logging

from tiforge.model.loading import ModelLoadError

log = logging.getLogger("tiforge")


def sd_family(text_encoder, unet) -> str:
    """"SD 1.x", "SD 2.x", or "SD-architecture" when the marks disagree (a custom model)."""
    openclip = getattr(text_encoder.config, "hidden_act", None) == "gelu"
    linear = bool(getattr(unet.config, "use_linear_projection", False))
    if openclip and linear:
        return "SD 2.x"
    if not openclip and not linear:
        return "SD 1.x"
    return "SD-architecture"


def check_v2(v2: bool, family: str, model: str) -> None:
    """kohya's --v2 on a model that is plainly SD 1.x is a mistake worth stopping for: with kohya it
    would load the model wrongly. Without --v2 an SD 2.x model is fine here (read from the model)."""
    if v2 and family == "SD 1.x":
        raise ModelLoadError(
            f"v2: {model} is an SD 1.x model (CLIP ViT-L text encoder, convolutional attention projections), "
            "not SD 2.x; remove --v2 (v2: false)"
        )
    if not v2 and family == "SD 2.x":
        log.info("%s is an SD 2.x model (read from the model; kohya would need --v2)", model)
