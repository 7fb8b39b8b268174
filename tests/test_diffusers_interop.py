"""The learned embedding loads with diffusers' `load_textual_inversion` and changes the prompt
embedding exactly as tiforge's own validation encoding does."""

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from tiforge.config import config_from_dict
from tiforge.model_loading import load_sd_components
from tiforge.tokens import add_placeholder, install_placeholder_embedding
from tiforge.train import train
from tiforge.validation import encode_prompts

from conftest import base_config


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_diffusers_load_textual_inversion_matches_our_encoding(family, tiny_sd1, tiny_sd2, image_dir, tmp_path):
    model = tiny_sd1 if family == "sd1" else tiny_sd2
    result = train(config_from_dict(base_config(model, image_dir, tmp_path / "out", max_train_steps=3, num_vectors=3)),
                   progress=False)
    prompt = "a <thing> on a beach"

    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, local_files_only=True)
    pipe.load_textual_inversion(str(result.embedding_path), token="<thing>")
    theirs, _ = pipe.encode_prompt(prompt, "cpu", 1, False)

    parts = load_sd_components(str(model))
    ph = add_placeholder(parts.tokenizer, "<thing>", 3)
    install_placeholder_embedding(parts.text_encoder, ph, load_file(result.embedding_path)["<thing>"])
    with torch.no_grad():
        ours = encode_prompts(parts.tokenizer, parts.text_encoder, [ph.expand(prompt)], "cpu")
    assert torch.allclose(ours, theirs, atol=1e-5)

    # and the learned vectors really change the prompt embedding
    plain = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, local_files_only=True)
    baseline, _ = plain.encode_prompt("a toy on a beach", "cpu", 1, False)
    assert not torch.allclose(ours, baseline, atol=1e-3)
