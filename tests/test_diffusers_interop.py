"""The learned embedding loads with diffusers' `load_textual_inversion` (SDXL: once per text
encoder) and changes the prompt embedding exactly as tiforge's own validation encoding does."""

import pytest
import torch
from diffusers import DiffusionPipeline

from tiforge.config.loading import config_from_dict
from tiforge.embeddings.files import load_embedding
from tiforge.model.loading import load_sd_components
from tiforge.model.text_conditioning import PromptEncoder
from tiforge.training.recipe import train

from conftest import SDXL, base_config

PROMPT = "a <thing> on a beach"


def _diffusers_encoding(model, embedding_path, sdxl: bool, prompt: str = PROMPT):
    pipe = DiffusionPipeline.from_pretrained(model, local_files_only=True, **({} if sdxl else {"safety_checker": None}))
    if embedding_path is not None and sdxl:
        emb = load_embedding(embedding_path)
        pipe.load_textual_inversion(emb.vectors["clip_l"], token="<thing>", text_encoder=pipe.text_encoder,
                                    tokenizer=pipe.tokenizer)
        pipe.load_textual_inversion(emb.vectors["clip_g"], token="<thing>", text_encoder=pipe.text_encoder_2,
                                    tokenizer=pipe.tokenizer_2)
    elif embedding_path is not None:
        pipe.load_textual_inversion(str(embedding_path), token="<thing>")
    if sdxl:
        embeds, _, pooled, _ = pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        return embeds, pooled
    return pipe.encode_prompt(prompt, "cpu", 1, False)[0], None


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_diffusers_load_textual_inversion_matches_our_encoding(family, request, image_dir, tmp_path):
    model = request.getfixturevalue(f"tiny_{family}")
    sdxl = family == "sdxl"
    cfg = base_config(model, image_dir, tmp_path / "out", max_train_steps=3, num_vectors=3, **(SDXL if sdxl else {}))
    result = train(config_from_dict(cfg), progress=False)

    theirs, theirs_pooled = _diffusers_encoding(model, result.embedding_path, sdxl)

    parts = load_sd_components(str(model), sdxl=sdxl)
    encoder = PromptEncoder.of(parts)
    encoder.add_placeholder("<thing>", encoder.vectors_of(load_embedding(result.embedding_path)))
    with torch.no_grad():
        ours, pooled = encoder.encode([PROMPT])
    assert torch.allclose(ours, theirs, atol=1e-5)
    if sdxl:
        assert ours.shape[-1] == 32 + 64 and torch.allclose(pooled, theirs_pooled, atol=1e-5)

    # and the learned vectors really change the prompt embedding
    baseline, _ = _diffusers_encoding(model, None, sdxl, "a toy on a beach")
    assert not torch.allclose(ours, baseline, atol=1e-3)
