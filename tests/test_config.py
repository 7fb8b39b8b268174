import textwrap

import pytest
import yaml

from tiforge.frontends.cli import _example_config, main
from tiforge.config.schema import ConfigError
from tiforge.config.loading import apply_overrides, config_from_dict, load_config

from conftest import base_config

# The shape of invoke-training's sample SD textual-inversion config (minus bucketing).
INVOKE_TRAINING_YAML = """
type: SD_TEXTUAL_INVERSION
seed: 1
base_output_dir: output/sd_ti_bruce_the_gnome
optimizer:
  optimizer_type: AdamW
  learning_rate: 4e-3
lr_warmup_steps: 200
lr_scheduler: cosine
data_loader:
  type: TEXTUAL_INVERSION_SD_DATA_LOADER
  dataset:
    type: IMAGE_DIR_DATASET
    dataset_dir: "sample_data/bruce_the_gnome"
    keep_in_memory: True
  caption_preset: object
  resolution: 512
  center_crop: True
  random_flip: False
  shuffle_caption_delimiter: null
  dataloader_num_workers: 4
model: runwayml/stable-diffusion-v1-5
num_vectors: 4
placeholder_token: "bruce_the_gnome"
initializer_token: "gnome"
cache_vae_outputs: False
gradient_accumulation_steps: 1
mixed_precision: fp16
gradient_checkpointing: True
max_train_steps: 2000
save_every_n_steps: 200
validate_every_n_steps: 200
max_checkpoints: 20
validation_prompts:
  - A photo of bruce_the_gnome at the beach
  - A photo of bruce_the_gnome reading a book
train_batch_size: 1
num_validation_images_per_prompt: 3
"""


def test_invoke_training_sample_config_loads_as_is(tmp_path):
    path = tmp_path / "gnome.yaml"
    path.write_text(INVOKE_TRAINING_YAML)
    cfg = load_config(path)
    assert cfg.optimizer.learning_rate == 4e-3
    assert cfg.data_loader.dataset.keep_in_memory is True
    assert cfg.num_vectors == 4 and cfg.lr_scheduler == "cosine"


def test_example_config_is_valid_and_documented():
    text = _example_config()
    assert text.count("#") > 40, "the example should explain its fields"
    cfg = config_from_dict(yaml.safe_load(text), "example")
    assert cfg.placeholder_token == "<my-concept>"


def _field_paths(model, prefix=""):
    """Every field of a config model, the fields of the models inside it (all variants of a union) too."""
    import typing

    from pydantic import BaseModel

    def models_in(annotation):
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield annotation
        for arg in typing.get_args(annotation):
            yield from models_in(arg)

    for name, info in model.model_fields.items():
        yield prefix + name
        for sub in models_in(info.annotation):
            yield from _field_paths(sub, f"{prefix}{name}.")


def test_example_config_shows_every_field_with_a_comment():
    """`tiforge config --example` is the reference of the YAML fields: each one appears, set or commented out."""
    import re

    from tiforge.config.schema import SdTextualInversionConfig, SdxlTextualInversionConfig

    text = _example_config()
    shown = set(re.findall(r"^[ #]*([A-Za-z_0-9]+):", text, re.M))
    paths = {p for m in (SdTextualInversionConfig, SdxlTextualInversionConfig) for p in _field_paths(m)}
    assert len(paths) > 130
    missing = sorted(p for p in paths if p.rsplit(".", 1)[-1] not in shown)
    assert not missing, f"fields missing from example_config.yaml: {missing}"
    assert "no effect with squash" in next(line for line in text.splitlines() if line.startswith("  center_crop:"))


def test_all_problems_reported_at_once_with_field_paths():
    data = {
        "base_output_dir": "o",
        "model": "m",
        "placeholder_token": "<x>",
        "learning_rate": 1.0,
        "num_vectors": "four",
        "data_loader": {"dataset": {"type": "IMAGE_DIR_DATASET"}, "resolution": 33},
    }
    with pytest.raises(ConfigError) as err:
        config_from_dict(data, "my.yaml")
    msg = str(err.value)
    assert "my.yaml: the config has 4 problem(s)" in msg
    assert "learning_rate: unknown field (did you mean optimizer.learning_rate?)" in msg
    assert "num_vectors:" in msg
    assert "data_loader.dataset.dataset_dir: Field required" in msg
    assert "data_loader.resolution: resolution must be positive and a multiple of 8" in msg


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"initial_phrase": "a b"}, "set exactly one (got initializer_token, initial_phrase)"),
        ({"max_train_epochs": 3}, "max_train_steps / max_train_epochs: both are set"),
        ({"max_train_steps": None}, "set one of them to say how long to train"),
        ({"save_every_n_steps": 1, "save_every_n_epochs": 1}, "save_every_n_steps / save_every_n_epochs"),
        ({"validate_every_n_steps": 1, "validate_every_n_epochs": 1}, "validate_every_n_steps / validate_every_n_epochs"),
        (
            {"validation_prompts": ["a", "b"], "negative_validation_prompts": ["x"]},
            "negative_validation_prompts: has 1 entries but validation_prompts has 2",
        ),
        ({"cache_vae_outputs": True, "data_loader__center_crop": False}, "data_loader.center_crop: false"),
        ({"data_loader__caption_preset": None}, "an IMAGE_DIR_DATASET has no captions"),
        ({"data_loader__caption_templates": ["a {}"]}, "caption_preset / data_loader.caption_templates: set only one"),
        ({"data_loader__keep_original_captions": True}, "keep_original_captions: only applies"),
        ({"placeholder_token": "two words"}, "contains whitespace"),
        ({"data_loader__caption_preset": None, "data_loader__caption_templates": ["no slot"]}, "exactly one '{}' slot"),
        ({"cache_vae_outputs_to_disk": True, "cache_vae_outputs": False},
         "cache_vae_outputs_to_disk: needs cache_vae_outputs: true"),
        ({"cache_vae_outputs": True, "data_loader__color_aug": True}, "data_loader.color_aug: true"),
        ({"data_loader__aspect_ratio_buckets": {"target_resolution": 512, "start_dim": 768, "end_dim": 256}},
         "start_dim 768 is larger than end_dim 256"),
        ({"data_loader__aspect_ratio_buckets": {"target_resolution": 32, "start_dim": 256, "end_dim": 1024}},
         "target_resolution 32 is smaller than divisible_by 64"),
        ({"data_loader__caption_templates_file": "t.txt"}, "caption_preset / data_loader.caption_templates_file"),
    ],
)
def test_cross_field_rules(tmp_path, overrides, expected):
    with pytest.raises(ConfigError) as err:
        config_from_dict(base_config(tmp_path, tmp_path, tmp_path, **overrides))
    assert expected in str(err.value)


def test_set_overrides_parse_values_and_nest():
    data = apply_overrides({"optimizer": {"learning_rate": 1}}, ["optimizer.learning_rate=5e-4", "seed=7", "x.y.z=true"])
    assert data["optimizer"]["learning_rate"] == 5e-4 and data["seed"] == 7 and data["x"]["y"]["z"] is True


def test_cli_print_config_applies_set(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base_config(tmp_path, tmp_path, tmp_path)))
    assert main(["train", str(path), "--set", "optimizer.learning_rate=0.25", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optimizer"]["learning_rate"] == 0.25


def test_cli_reports_config_errors_without_traceback(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent("""
        base_output_dir: o
        model: m
        placeholder_token: "<x>"
        initializer_token: toy
        max_train_steps: 3
        data_loader: {dataset: {type: IMAGE_DIR_DATASET, dataset_dir: d}, caption_preset: object}
        train_data_dir: here
    """))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "train_data_dir: unknown field (did you mean data_loader.dataset.dataset_dir?)" in err
    assert "Traceback" not in err
