"""Checks of the run-management fields (kohya's saving, sampling and regularization options) that
look at more than one field, or at the prompt file itself, so that a bad line stops the run before
any model is loaded."""

from __future__ import annotations


def run_management_problems(config) -> list[str]:
    problems: list[str] = []
    if (config.sample_every_n_steps or config.sample_every_n_epochs or config.sample_at_first) \
            and not config.sample_prompts:
        problems.append("sample_every_n_steps / sample_every_n_epochs / sample_at_first: set sample_prompts to the "
                        "prompt file to sample from")
    if config.sample_prompts:
        from tiforge.training.sample_prompts import SamplePromptError, check_sampler_available, read_sample_prompts

        try:
            for prompt in read_sample_prompts(config.sample_prompts):
                check_sampler_available(prompt.sampler or config.sample_sampler)
        except SamplePromptError as err:
            problems.append(f"sample_prompts: {err}")
    return problems
