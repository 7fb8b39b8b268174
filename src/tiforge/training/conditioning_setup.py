"""kohya's model and conditioning options, checked against the loaded model before training: the
family (--v2), the prediction type (--v_parameterization), clip skip, and the noise schedule
(--zero_terminal_snr)."""

from __future__ import annotations

import logging

from tiforge.config.ignored_options import warn_ignored_options
from tiforge.config.schema import ConfigError, TrainingConfig
from tiforge.model.clip_skip import checked_clip_skip
from tiforge.model.family import check_v2
from tiforge.model.noise import rescale_zero_terminal_snr

log = logging.getLogger("tiforge")


def resolve_prediction_type(parts, config: TrainingConfig) -> str:
    """The prediction type the loss trains: prediction_type, else v-prediction with v_parameterization
    (kohya's flag), else the model's own; set on the training scheduler too."""
    own = parts.noise_scheduler.config.prediction_type
    chosen = config.prediction_type or ("v_prediction" if config.v_parameterization else None)
    if chosen is None:
        return own
    if config.v_parameterization and own != "v_prediction":
        log.info("v_parameterization: training v-prediction (the model's scheduler says %s)", own)
    parts.noise_scheduler.register_to_config(prediction_type=chosen)
    return chosen


def check_conditioning_options(parts, config: TrainingConfig, prediction_type: str) -> None:
    """Refuse what does not fit this model, and say what applies and what does not."""
    if not parts.is_sdxl:
        check_v2(config.v2, parts.family, config.model)
    if config.scale_v_pred_loss_like_noise_pred and prediction_type != "v_prediction":
        raise ConfigError("scale_v_pred_loss_like_noise_pred: only applies to v-prediction training, and this run "
                          f"trains {prediction_type}; add --v_parameterization or remove the option")
    checked_clip_skip(config.clip_skip, parts.text_encoder, parts.is_sdxl, parts.family)
    warn_ignored_options(config)
    if config.max_token_length not in (None, 75):
        log.info("max_token_length %d: captions are encoded in %d windows of 75 tokens", config.max_token_length,
                 config.max_token_length // 75)
    if config.zero_terminal_snr:
        if prediction_type != "v_prediction":
            log.warning("zero_terminal_snr with %s: the last timestep is pure noise, which an epsilon model "
                        "cannot denoise well; kohya advises v-prediction with it", prediction_type)
        rescale_zero_terminal_snr(parts.noise_scheduler)
        log.info("zero_terminal_snr: training noise schedule rescaled to end in pure noise")
