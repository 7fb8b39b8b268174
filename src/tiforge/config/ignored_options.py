"""Options that have no effect with the rest of the config. kohya accepts them without a word, and
so does tiforge (command lines copy over as they are), but it says so once at the start of training:
a user who set huber_c on an l2 run believes it is doing something."""

from __future__ import annotations

import logging

log = logging.getLogger("tiforge")


def _is_set(config, field: str) -> bool:
    """Differing from the field's default. Not "given explicitly": `--print-config` and the run folder's
    config.yaml write every field, and a config made from them would warn about defaults it never chose."""
    return getattr(config, field) != type(config).model_fields[field].default


def ignored_options(config) -> list[str]:
    """One message per option (or group) that this config sets but never uses."""
    out = []
    huber = [f for f in ("huber_c", "huber_schedule", "huber_scale") if _is_set(config, f)]
    if huber and config.loss_type in ("l2", "l1"):
        out.append(f"{' / '.join(huber)}: only used by loss_type huber or smooth_l1, and this run's loss_type is "
                   f"{config.loss_type}; ignored (add --loss_type huber to use {'it' if len(huber) == 1 else 'them'})")
    elif "huber_scale" in huber and config.huber_schedule == "snr":
        out.append("huber_scale: only scales the constant and exponential huber_schedule, and this run's is snr; "
                   "ignored")
    if _is_set(config, "multires_noise_discount") and not config.multires_noise_iterations:
        out.append("multires_noise_discount: only used with multires_noise_iterations, which is not set; ignored")
    if config.noise_offset_random_strength and not config.noise_offset:
        out.append("noise_offset_random_strength: draws the strength of noise_offset, which is not set; ignored "
                   "(set noise_offset, e.g. 0.05, to use it)")
    if config.ip_noise_gamma_random_strength and not config.ip_noise_gamma:
        out.append("ip_noise_gamma_random_strength: draws the strength of ip_noise_gamma, which is not set; "
                   "ignored (set ip_noise_gamma, e.g. 0.1, to use it)")
    return out


def warn_ignored_options(config) -> None:
    for message in ignored_options(config):
        log.warning(message)
