"""On the pretrained toy model, textual inversion must really teach a concept: the judge's hit rate
for it goes from near zero with an unrelated initializer to a clear majority after training."""

import pytest

from tiforge.config import config_from_dict
from tiforge.embedding_files import save_embedding
from tiforge.model_loading import load_sd_components
from tiforge.toy_model import evaluate_prompts, hit_rate, pipeline_with_embedding, toy_model_dir, write_concept_images
from tiforge.train import train

# concept -> (prompt, caption config, vectors). Measured with seed 0 on the shipped toy model
# (16 pictures each): purple star 0.00 -> 0.88; checkered style 0.00 -> 1.00 (of which light: 1 in 16,
# see toy_model.is_hit).
CASES = {
    "purple-star": ("a <c>", {"caption_templates": ["a {}"]}, 2),
    "light-checkered": ("a painting in the style of <c>", {"caption_preset": "style"}, 2),
}


@pytest.fixture(scope="module")
def toy():
    return toy_model_dir()


def test_pretrained_toy_model_follows_prompts(toy):
    # 1 picture per prompt; assets/toy_model/report.json holds the 2-per-prompt figures of the shipped model
    report = evaluate_prompts(toy, per_prompt=1)
    assert report["colour_accuracy"] >= 0.8, report
    assert report["shape_accuracy"] >= 0.7, report
    assert report["background_accuracy"] >= 0.7, report


@pytest.mark.parametrize("concept", list(CASES))
def test_textual_inversion_learns_a_held_out_concept(concept, toy, tmp_path):
    prompt, captions, vectors = CASES[concept]
    data = write_concept_images(concept, tmp_path / "data", n=6, seed=0)
    cfg = config_from_dict({
        "seed": 0, "base_output_dir": str(tmp_path / "out"), "report_to": "none", "model": str(toy),
        "placeholder_token": "<c>", "initializer_token": "dog", "num_vectors": vectors, "max_train_steps": 300,
        "train_batch_size": 6, "cache_vae_outputs": True, "optimizer": {"learning_rate": 1e-2},
        "data_loader": {"dataset": {"type": "IMAGE_DIR_DATASET", "dataset_dir": str(data)}, "resolution": 32,
                        **captions},
    })
    result = train(cfg, progress=False)

    parts = load_sd_components(str(toy))
    dog = parts.tokenizer.encode("dog", add_special_tokens=False) * vectors
    initial = save_embedding(tmp_path / "initial.safetensors", "<c>",
                             parts.text_encoder.get_input_embeddings().weight[dog].detach().float())
    before, _ = hit_rate(pipeline_with_embedding(initial, "<c>", toy), concept, prompt, n=16)
    after, _ = hit_rate(pipeline_with_embedding(result.embedding_path, "<c>", toy), concept, prompt, n=16)
    print(f"{concept}: hit rate {before:.2f} -> {after:.2f}")
    assert before <= 0.2, f"{concept}: the untrained token already draws the concept ({before:.2f})"
    assert after >= 0.6, f"{concept}: hit rate only {before:.2f} -> {after:.2f}"
