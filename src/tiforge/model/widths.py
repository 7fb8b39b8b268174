"""Token widths and the model families they belong to; torch-free, for `tiforge inspect`."""


def family_of_width(width: int) -> str:
    return {768: "SD 1.x (or SDXL clip_l)", 1024: "SD 2.x", 1280: "SDXL clip_g"}.get(width, "an unknown model family")
