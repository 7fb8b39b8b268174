"""On the pretrained toy models (SD and its SDXL twin), textual inversion must really teach a
concept: the judge's hit rate for it goes from near zero with an unrelated initializer to a clear
majority after training."""

import pytest

from tiforge.config.loading import config_from_dict
from tiforge.embeddings.files import save_embedding
from tiforge.model.loading import load_sd_components
from tiforge.toy.model import evaluate_prompts, hit_rate, pipeline_with_embedding, toy_model_dir, write_concept_images
from tiforge.training.recipe import train

# (family, concept) -> (prompt, caption config, vectors). Measured with seed 0 on the shipped toy
# models (16 pictures each): SD purple star 0.00 -> 0.88; SD checkered style 0.00 -> 1.00 (of which
# light: 1 in 16, see toy_model.is_hit); SDXL twin purple star 0.00 -> 0.94.
CASES = {
    ("sd", "purple-star"): ("a <c>", {"caption_templates": ["a {}"]}, 2),
    ("sd", "light-checkered"): ("a painting in the style of <c>", {"caption_preset": "style"}, 2),
    ("sdxl", "purple-star"): ("a <c>", {"caption_templates": ["a {}"]}, 2),
}
# What each pretrained model must manage with its own words (1 picture per prompt).
FOLLOWS = {"sd": {"colour": 0.8, "shape": 0.7, "background": 0.7}, "sdxl": {"colour": 0.8, "shape": 0.6, "background": 0.6}}


@pytest.mark.parametrize("family", list(FOLLOWS))
def test_pretrained_toy_model_follows_prompts(family):
    # assets/toy_model*/report.json hold the 2-per-prompt figures of the shipped models
    report = evaluate_prompts(toy_model_dir(family), per_prompt=1)
    for what, least in FOLLOWS[family].items():
        assert report[f"{what}_accuracy"] >= least, (family, report)


@pytest.mark.parametrize("family, concept", list(CASES))
def test_textual_inversion_learns_a_held_out_concept(family, concept, tmp_path):
    toy = toy_model_dir(family)
    prompt, captions, vectors = CASES[family, concept]
    data = write_concept_images(concept, tmp_path / "data", n=6, seed=0)
    cfg = config_from_dict({
        "type": "SDXL_TEXTUAL_INVERSION" if family == "sdxl" else "SD_TEXTUAL_INVERSION",
        "seed": 0, "base_output_dir": str(tmp_path / "out"), "report_to": "none", "model": str(toy),
        "placeholder_token": "<c>", "initializer_token": "dog", "num_vectors": vectors, "max_train_steps": 300,
        "train_batch_size": 6, "cache_vae_outputs": True, "optimizer": {"learning_rate": 1e-2},
        "data_loader": {"dataset": {"type": "IMAGE_DIR_DATASET", "dataset_dir": str(data)}, "resolution": 32,
                        **captions},
    })
    result = train(cfg, progress=False)

    parts = load_sd_components(str(toy), sdxl=family == "sdxl")
    dog = parts.tokenizer.encode("dog", add_special_tokens=False) * vectors
    rows = {name: te.get_input_embeddings().weight[dog].detach().float() for name, _, te in parts.text_encoders}
    initial = save_embedding(tmp_path / "initial.safetensors", "<c>", rows if family == "sdxl" else rows["text_encoder"],
                             format="kohya" if family == "sdxl" else "diffusers")
    before, _ = hit_rate(pipeline_with_embedding(initial, "<c>", toy), concept, prompt, n=16)
    after, _ = hit_rate(pipeline_with_embedding(result.embedding_path, "<c>", toy), concept, prompt, n=16)
    print(f"{family} {concept}: hit rate {before:.2f} -> {after:.2f}")
    assert before <= 0.2, f"{concept}: the untrained token already draws the concept ({before:.2f})"
    assert after >= 0.6, f"{concept}: hit rate only {before:.2f} -> {after:.2f}"
