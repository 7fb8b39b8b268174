"""How the vectors learn (issue 20): norm rules, the directional update, decay toward the start,
cross initialization and logit-normal timesteps; each leaves an ordinary embedding file and resumes
exactly."""

import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tiforge.config.loading import config_from_dict
from tiforge.frontends.cli import main
from tiforge.model.loss import NoiseSource
from tiforge.model.noise import NoiseSettings, draw_timesteps
from tiforge.training.recipe import train
from tiforge.training.vector_rules import VectorRules, VocabularyNorms

from conftest import SDXL, base_config


def _norms(mean=1.0, median=2.0) -> VocabularyNorms:
    return VocabularyNorms(mean=mean, median=median, low=0.1, high=5.0)


def _vectors(rows=((3.0, 4.0, 0.0), (0.0, 0.5, 0.0))) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.tensor(rows))


def _train_vectors(config: dict):
    result = train(config_from_dict(config), progress=False)
    return result, load_file(result.embedding_path)


# ------------------------------------------------------------------------------------ the rules alone


def test_preserve_norm_rescales_each_vector_to_the_vocabulary_median_norm():
    vectors, norms = _vectors(), _norms(median=2.0)
    VectorRules(preserve_norm=True).constrain(vectors, vectors.detach().clone(), norms, rate=0.1)
    assert torch.allclose(vectors.norm(dim=1), torch.tensor([2.0, 2.0]))
    assert torch.allclose(vectors[0], torch.tensor([1.2, 1.6, 0.0]))  # the direction kept


def test_directional_update_keeps_only_the_tangent_gradient_and_the_mean_norm():
    vectors, norms = _vectors(), _norms(mean=1.0)
    vectors.grad = torch.tensor([[3.0, 4.0, 1.0], [0.0, -2.0, 2.0]])
    rules = VectorRules(directional=True)
    rules.shape_gradient(vectors, norms)
    assert torch.allclose((vectors.grad * vectors).sum(dim=1), torch.zeros(2), atol=1e-6)  # no radial part
    assert torch.allclose(vectors.grad, torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 2.0]]))
    rules.constrain(vectors, vectors.detach().clone(), norms, rate=0.1)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(2))


def test_norm_penalty_gradient_points_toward_the_mean_norm():
    vectors, norms = _vectors(), _norms(mean=1.0)
    vectors.grad = torch.zeros(2, 3)
    VectorRules(norm_penalty=0.5).shape_gradient(vectors, norms)
    # d/dv 0.5 (|v| - 1)^2 = (|v| - 1) v/|v|: outward for the long vector (|v| 5), inward for the short one (0.5)
    assert torch.allclose(vectors.grad[0], torch.tensor([4 * 0.6, 4 * 0.8, 0.0]))
    assert torch.allclose(vectors.grad[1], torch.tensor([0.0, -0.5, 0.0]))


def test_decay_pulls_toward_the_start_not_toward_zero():
    vectors, start = _vectors(), torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    before = (vectors.detach() - start).clone()
    VectorRules(decay=2.0).constrain(vectors, start, _norms(), rate=0.1)
    assert torch.allclose(vectors.detach() - start, before * 0.8)  # 1 - rate x strength of the way left


def test_logit_normal_timesteps_gather_mid_schedule():
    source = NoiseSource(0, "cpu")
    settings = NoiseSettings(timestep_sampling="logit_normal", logit_mean=0.0, logit_std=1.0)
    t = draw_timesteps(source, 20000, 0, 1000, settings).float()
    assert t.min() >= 0 and t.max() <= 999
    assert abs(t.median().item() - 500) < 15
    # P(sigmoid(z) < 0.1) = P(z < logit 0.1 = -2.197) = 1.4%, where uniform puts 10%
    assert 0.008 < (t < 100).float().mean().item() < 0.02
    # P(logit 0.25 < z < logit 0.75) = P(|z| < 1.0986) = 72.8%, where uniform puts 50%
    assert 0.71 < ((t >= 250) & (t < 750)).float().mean().item() < 0.745
    shifted = draw_timesteps(source, 20000, 200, 400, NoiseSettings(timestep_sampling="logit_normal", logit_mean=1.0))
    assert shifted.min() >= 200 and shifted.max() <= 399
    assert abs(shifted.float().median().item() - (200 + 200 / (1 + math.exp(-1.0)))) < 3
    uniform = draw_timesteps(NoiseSource(0, "cpu"), 8, 0, 1000, NoiseSettings())
    assert torch.equal(uniform, NoiseSource(0, "cpu").timesteps(8, 1000, 0))  # uniform draws as before


# ------------------------------------------------------------------------------------ in a real run


def _vocabulary_norms(model) -> VocabularyNorms:
    from transformers import CLIPTextModel

    encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder")
    return VocabularyNorms.of_table(encoder.get_input_embeddings().weight)


@pytest.mark.parametrize("rule, statistic", [("preserve_embedding_norm", "median"), ("directional_update", "mean")])
def test_norm_rules_hold_the_trained_vectors_at_the_vocabulary_norm(rule, statistic, tiny_sd1, image_dir, tmp_path):
    plain = base_config(tiny_sd1, image_dir, tmp_path / "plain", max_train_steps=3,
                        optimizer={"optimizer_type": "AdamW", "learning_rate": 0.5})
    _, plain_file = _train_vectors(plain)
    _, ruled_file = _train_vectors({**plain, "base_output_dir": str(tmp_path / "ruled"), rule: True})
    target = getattr(_vocabulary_norms(tiny_sd1), statistic)
    # an ordinary embedding file: the same keys, shapes and dtype as without the rule
    layout = {k: (v.shape, v.dtype) for k, v in plain_file.items()}
    assert {k: (v.shape, v.dtype) for k, v in ruled_file.items()} == layout
    norms = ruled_file["emb_params"].float().norm(dim=1)
    assert torch.allclose(norms, torch.full_like(norms, target), rtol=1e-4)
    assert not torch.allclose(plain_file["emb_params"].float().norm(dim=1), norms, rtol=1e-2)  # the rule did it


def test_sdxl_vectors_keep_each_encoders_own_vocabulary_norm(tiny_sdxl, image_dir, tmp_path):
    from tiforge.model.loading import load_sd_components

    cfg = base_config(tiny_sdxl, image_dir, tmp_path / "out", max_train_steps=2, preserve_embedding_norm=True,
                      optimizer={"optimizer_type": "AdamW", "learning_rate": 0.5}, **SDXL)
    _, saved = _train_vectors(cfg)
    assert set(saved) == {"clip_l", "clip_g"}
    parts = load_sd_components(str(tiny_sdxl), sdxl=True)
    medians = {name: VocabularyNorms.of_table(enc.get_input_embeddings().weight).median
               for name, _, enc in parts.text_encoders}
    assert abs(medians["clip_l"] - medians["clip_g"]) > 1e-3  # the test tells the two apart
    for name, median in medians.items():
        assert torch.allclose(saved[name].float().norm(dim=1), torch.full((2,), median), rtol=1e-4), name


def test_decay_toward_initializer_ends_nearer_the_start(tiny_sd1, image_dir, tmp_path):
    from tiforge.model.loading import load_sd_components
    from tiforge.training.model_setup import starting_vectors

    cfg = base_config(tiny_sd1, image_dir, tmp_path / "plain", max_train_steps=4,
                      optimizer={"optimizer_type": "AdamW", "learning_rate": 0.05, "weight_decay": 10.0})
    config = config_from_dict(cfg)
    (start,) = starting_vectors(config, load_sd_components(str(tiny_sd1)), None).values()
    _, toward_zero = _train_vectors(cfg)
    _, toward_start = _train_vectors({**cfg, "base_output_dir": str(tmp_path / "decay"),
                                      "decay_toward_initializer": True})
    far, near = ((f["emb_params"] - start).norm().item() for f in (toward_zero, toward_start))
    # AdamW's decay (50% per step here) takes the vectors toward 0; re-centred, it holds them near the start
    assert near < 0.5 * far, (near, far)


def _encoder_output(tokenizer, encoder, word: str) -> torch.Tensor:
    ids = tokenizer(word, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder(ids).last_hidden_state[0, 1]  # after the start token


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_cross_initialization_starts_from_each_text_encoders_output(family, tiny_sd1, tiny_sdxl, image_dir, tmp_path):
    from tiforge.model.loading import load_sd_components
    from tiforge.training.model_setup import starting_vectors

    model = tiny_sdxl if family == "sdxl" else tiny_sd1
    cfg = base_config(model, image_dir, tmp_path / "out", initialize_from_text_encoder_output=True,
                      **(SDXL if family == "sdxl" else {}))
    parts = load_sd_components(str(model), sdxl=family == "sdxl")
    vectors = starting_vectors(config_from_dict(cfg), parts, None)
    classic = starting_vectors(config_from_dict({**cfg, "initialize_from_text_encoder_output": False}), parts, None)
    assert len(vectors) == (2 if family == "sdxl" else 1)
    for name, tokenizer, encoder in parts.text_encoders:
        expected = _encoder_output(tokenizer, encoder, "toy")
        assert vectors[name].shape == (2, expected.shape[0])
        assert torch.allclose(vectors[name], expected.expand(2, -1), atol=1e-5)
        assert not torch.allclose(vectors[name], classic[name], atol=1e-3)


def test_a_run_with_the_rules_on_resumes_bit_identical(tiny_sd1, image_dir, tmp_path):
    cfg = base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=6, save_every_n_steps=3,
                      train_batch_size=1, timestep_sampling="logit_normal", logit_mean=-0.5,
                      initialize_from_text_encoder_output=True, decay_toward_initializer=True,
                      embedding_norm_penalty=0.2,
                      optimizer={"optimizer_type": "AdamW", "learning_rate": 0.05, "weight_decay": 2.0})
    full = train(config_from_dict(cfg), progress=False)
    expected = load_file(full.embedding_path)["emb_params"].clone()
    half = full.run_dir / "checkpoints" / "checkpoint-step_00000003"
    train(config_from_dict({**cfg, "resume_from_checkpoint": str(half)}), progress=False)
    assert torch.equal(load_file(full.embedding_path)["emb_params"], expected)


@pytest.mark.parametrize("fields, message", [
    ({"preserve_embedding_norm": True, "directional_update": True}, "preserve_embedding_norm / directional_update: "),
    ({"directional_update": True, "embedding_norm_penalty": 0.1}, "embedding_norm_penalty: directional_update"),
    ({"decay_toward_initializer": True, "optimizer": {"optimizer_type": "AdamW", "weight_decay": 0.0}},
     "decay_toward_initializer: the optimizer has no weight decay"),
    ({"initialize_from_text_encoder_output": True, "initializer_token": None, "initial_embedding_file": "x.pt"},
     "initialize_from_text_encoder_output: initial_embedding_file"),
    ({"logit_std": 2.0}, "logit_std: only shape timestep_sampling: logit_normal"),
    ({"logit_std": 0}, "logit_std"),
    ({"embedding_norm_penalty": -1}, "embedding_norm_penalty"),
    ({"timestep_sampling": "cosine"}, "timestep_sampling"),
])
def test_bad_learning_settings_are_refused_naming_the_field(fields, message, tiny_sd1, image_dir, tmp_path, capsys):
    cfg = {**base_config(tiny_sd1, image_dir, tmp_path / "out"), **fields}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_unset_fields_train_as_before(tiny_sd1):
    config = config_from_dict(base_config(tiny_sd1, tiny_sd1, tiny_sd1))
    assert not VectorRules.from_config(config).active
    assert NoiseSettings.of(config).timestep_sampling == "uniform"
