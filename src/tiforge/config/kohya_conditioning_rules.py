"""Cross-field rules of kohya's conditioning, noise and loss options (the fields themselves live in
`config.schema`); each message names the fields at fault and what to set instead."""

from __future__ import annotations


def conditioning_problems(config) -> list[str]:
    problems: list[str] = []
    if config.max_token_length not in (None, 75, 150, 225):
        problems.append(f"max_token_length: {config.max_token_length} is not one of 75, 150 or 225 (kohya's "
                        "choices: one, two or three windows of 75 tokens)")
    if config.adaptive_noise_scale is not None and config.noise_offset is None:
        problems.append("adaptive_noise_scale: adds to noise_offset, which is not set; set noise_offset too "
                        "(e.g. 0.05), or remove adaptive_noise_scale")
    if config.v_parameterization and config.prediction_type == "epsilon":
        problems.append("v_parameterization / prediction_type: v_parameterization means prediction_type "
                        "v_prediction, but prediction_type is epsilon; keep only one")
    if config.v2 and config.is_sdxl:
        problems.append("v2: marks an SD 2.x model, but this is an SDXL config; remove v2")
    if config.min_timestep is not None and config.max_timestep is not None \
            and config.min_timestep > config.max_timestep:
        problems.append(f"min_timestep / max_timestep: {config.min_timestep} is above {config.max_timestep}; "
                        "the lowest timestep must not exceed the highest")
    # noise_offset_random_strength / ip_noise_gamma_random_strength without their strength do nothing, as
    # in kohya: a warning at the start (`config.ignored_options`), not a refusal
    return problems
