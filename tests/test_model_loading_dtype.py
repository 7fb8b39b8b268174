"""Weights load straight into the training dtype: every load path gives the values of a load-then-cast,
and a local folder is read tensor by tensor, never as a whole state dict in the stored dtype."""

import weakref

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from tiforge.model.loading import load_sd_components
from tiforge.model.single_file_export import save_single_file

PARTS = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel,
         "text_encoder_2": CLIPTextModelWithProjection}


def assert_equal_to_load_then_cast(parts, folder, dtype, vae_dtype=None):
    for name, cls in PARTS.items():
        module = getattr(parts, name)
        if module is None:
            continue
        wanted = vae_dtype if name == "vae" and vae_dtype else dtype
        reference = cls.from_pretrained(folder, subfolder=name).to(wanted).state_dict()
        got = module.state_dict()
        assert got.keys() == reference.keys(), name
        for key, tensor in got.items():
            assert tensor.dtype == reference[key].dtype, (name, key, tensor.dtype)
            assert torch.equal(tensor, reference[key]), (name, key)
        assert all(p.dtype == wanted for p in module.parameters()), name
        assert not module.training, name


def test_folder_loads_in_the_target_dtype(tiny_sd1):
    assert_equal_to_load_then_cast(load_sd_components(str(tiny_sd1), dtype=torch.float16), tiny_sd1, torch.float16)


def test_sdxl_folder_and_a_vae_dtype_of_its_own(tiny_sdxl):
    parts = load_sd_components(str(tiny_sdxl), dtype=torch.bfloat16, sdxl=True, vae_dtype=torch.float32)
    assert_equal_to_load_then_cast(parts, tiny_sdxl, torch.bfloat16, vae_dtype=torch.float32)


def test_single_file_loads_in_the_target_dtype(tiny_sd1, tmp_path):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd1, safety_checker=None, local_files_only=True)
    path = save_single_file(pipe, tmp_path / "tiny.safetensors")
    parts = load_sd_components(str(path), single_file_config=str(tiny_sd1), dtype=torch.bfloat16)
    assert_equal_to_load_then_cast(parts, tiny_sd1, torch.bfloat16)


class _ReadSpy:
    """Stands in for safetensors.safe_open: counts the tensors read, and how many read in the stored
    dtype were still alive when the next one was read (a whole fp32 copy would keep them all; tensors
    are freed by reference counting the moment nothing holds them)."""

    def __init__(self, real):
        self.real, self.reads, self.most_alive, self.alive = real, 0, 0, []

    def __call__(self, *args, **kwargs):
        handle, spy = self.real(*args, **kwargs), self

        class Handle:
            def __enter__(self):
                handle.__enter__()
                return self

            def __exit__(self, *exc):
                return handle.__exit__(*exc)

            def keys(self):
                return handle.keys()

            def get_tensor(self, key):
                spy.alive = [ref for ref in spy.alive if ref() is not None]
                spy.most_alive = max(spy.most_alive, len(spy.alive))
                tensor = handle.get_tensor(key)
                spy.reads += 1
                if tensor.dtype == torch.float32:
                    spy.alive.append(weakref.ref(tensor))
                return tensor

        return Handle()


def test_a_folder_is_read_tensor_by_tensor_without_an_fp32_copy(tiny_sd1, monkeypatch):
    import diffusers.models.model_loading_utils as diffusers_loading
    import safetensors
    import safetensors.torch

    def whole_file(*args, **kwargs):
        raise AssertionError("a whole state dict was read")

    monkeypatch.setattr(diffusers_loading, "load_state_dict", whole_file)
    monkeypatch.setattr(safetensors.torch, "load_file", whole_file)
    spy = _ReadSpy(safetensors.safe_open)
    monkeypatch.setattr(safetensors, "safe_open", spy)
    parts = load_sd_components(str(tiny_sd1), dtype=torch.bfloat16)
    stored = sum(len(m.state_dict()) for m in (parts.unet, parts.vae, parts.text_encoder))
    assert spy.reads >= stored and spy.most_alive == 0
    assert parts.unet.dtype == torch.bfloat16
