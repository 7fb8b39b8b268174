"""kohya-ss's model, conditioning, noise and loss options (issue 18a): each rule of kohya's code in our
own words, and each option's effect on what is trained."""

import shlex
from types import SimpleNamespace

import pytest
import torch
import yaml
from diffusers import DDPMScheduler
from safetensors import safe_open

from tiforge.config.schema import ConfigError
from tiforge.frontends.cli import main
from tiforge.model.clip_tokenizer import load_clip_tokenizer
from tiforge.model.long_prompts import join_windows, window_ids
from tiforge.model.loss import LossSettings, NoiseSource, denoising_loss, huber_threshold, sample_weights, snr
from tiforge.model.noise import NoiseSettings, draw_training_noise, rescale_zero_terminal_snr
from tiforge.model.text_conditioning import PromptEncoder
from tiforge.toy.tiny import build_tiny_pipeline

from conftest import base_config, make_images, write_kohya_dataset_toml

BOS, EOS = 49406, 49407


@pytest.fixture(scope="module")
def sd1():
    return build_tiny_pipeline("sd1")


@pytest.fixture(scope="module")
def sd2():
    return build_tiny_pipeline("sd2")


def encoder_of(pipe, **kw) -> PromptEncoder:
    return PromptEncoder([("text_encoder", pipe.tokenizer, pipe.text_encoder)], sdxl=False, **kw)


def words(n: int) -> str:
    return " ".join(["cat"] * n)  # one token each


# ----------------------------------------------------------------------------- --v2, --v_parameterization


def test_family_is_read_from_the_text_encoder_and_unet(sd1, sd2):
    from tiforge.model.family import sd_family

    assert sd_family(sd1.text_encoder, sd1.unet) == "SD 1.x"
    assert sd_family(sd2.text_encoder, sd2.unet) == "SD 2.x"

    # the full-size models' configs (runwayml/stable-diffusion-v1-5, stabilityai/stable-diffusion-2-1)
    def parts(act, linear):
        return SimpleNamespace(config=SimpleNamespace(hidden_act=act)), \
            SimpleNamespace(config=SimpleNamespace(use_linear_projection=linear))

    assert sd_family(*parts("quick_gelu", False)) == "SD 1.x" and sd_family(*parts("gelu", True)) == "SD 2.x"
    assert sd_family(*parts("gelu", False)) == "SD-architecture"  # a custom mix: no --v2 check either way


def test_v2_on_an_sd1_model_is_a_named_error(tiny_sd1, image_dir, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(base_config(tiny_sd1, image_dir, tmp_path / "out", v2=True)))
    assert main(["train", str(cfg), "-q"]) == 2
    err = capsys.readouterr().err
    assert "v2:" in err and "is an SD 1.x model" in err and "remove --v2" in err


def test_v_parameterization_trains_v_prediction_on_an_epsilon_model(caplog):
    from tiforge.training.conditioning_setup import resolve_prediction_type
    from tiforge.config.schema import SdTextualInversionConfig

    def config(**kw):
        return SdTextualInversionConfig.model_construct(**{"prediction_type": None, "v_parameterization": False, **kw})

    parts = SimpleNamespace(noise_scheduler=DDPMScheduler(prediction_type="epsilon"))
    assert resolve_prediction_type(parts, config()) == "epsilon"
    with caplog.at_level("INFO", logger="tiforge"):
        assert resolve_prediction_type(parts, config(v_parameterization=True)) == "v_prediction"
    assert parts.noise_scheduler.config.prediction_type == "v_prediction"
    assert "v_parameterization: training v-prediction (the model's scheduler says epsilon)" in caplog.text


def test_kohya_flags_are_accepted_and_checked_up_front(tiny_sd1, image_dir, tmp_path, capsys):
    line = ["--pretrained_model_name_or_path", str(tiny_sd1), "--train_data_dir", str(image_dir),
            "--token_string", "tok", "--init_word", "cute", "--output_dir", str(tmp_path), "--max_train_steps", "1"]
    assert main(["train", *line, "--v2", "--v_parameterization", "--clip_skip=2", "--max_token_length=225",
                 "--noise_offset=0.05", "--loss_type=huber", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (cfg["v2"], cfg["v_parameterization"], cfg["clip_skip"], cfg["max_token_length"]) == (True, True, 2, 225)
    assert cfg["noise_offset"] == 0.05 and cfg["loss_type"] == "huber" and cfg["huber_schedule"] == "snr"
    assert main(["train", *line, "--adaptive_noise_scale=0.1", "--print-config"]) == 2
    assert "adaptive_noise_scale: adds to noise_offset, which is not set" in capsys.readouterr().err
    assert main(["train", *line, "--v_parameterization", "--prediction_type=epsilon", "--print-config"]) == 2
    assert "v_parameterization / prediction_type" in capsys.readouterr().err
    assert main(["train", *line, "--max_token_length=100", "--print-config"]) == 2


# ------------------------------------------------------------------------------------------- --clip_skip


def test_clip_skip_reads_the_nth_hidden_state_from_the_end_through_the_final_layer_norm(sd1):
    te = sd1.text_encoder
    ids = sd1.tokenizer(["a red cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        direct = te(ids, output_hidden_states=True)
        for skip in (None, 1):
            assert torch.equal(encoder_of(sd1, clip_skip=skip)(ids[:, None])[0], direct.last_hidden_state)
        expected = getattr(te, "text_model", te).final_layer_norm(direct.hidden_states[-2])
        got = encoder_of(sd1, clip_skip=2)(ids[:, None])[0]
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, direct.last_hidden_state, atol=1e-3)


def test_clip_skip_is_ignored_for_sdxl_as_kohya_does():
    assert PromptEncoder([], sdxl=True, clip_skip=2).clip_skip is None


def test_the_console_form_sets_clip_skip():
    from tiforge.frontends.console_ui import form_to_config

    form = {"model": "m", "trigger": "<t>", "data_dir": "d", "output_dir": "o"}
    assert form_to_config({**form, "clip_skip": "2"})["clip_skip"] == 2
    assert "clip_skip" not in form_to_config(form)


# ------------------------------------------------------------------------------------ --max_token_length


@pytest.mark.parametrize("pad", ["<|endoftext|>", "!"])
def test_long_captions_are_cut_into_77_token_windows_each_with_start_and_end(pad):
    tok = load_clip_tokenizer(pad_token=pad)
    pad_id = tok.pad_token_id
    ids = window_ids(tok, [words(100)], 225)[0]
    assert ids.shape == (3 * 77,)
    cat = tok.encode("cat", add_special_tokens=False)[0]
    first, second, third = ids[:77].tolist(), ids[77:154].tolist(), ids[154:].tolist()
    # a full window: start, 75 caption tokens, end
    assert first == [BOS] + [cat] * 75 + [EOS]
    # the caption ends in the second window: its end token, then padding
    assert second[:27] == [BOS] + [cat] * 25 + [EOS] and set(second[27:]) == {pad_id}
    # an empty window still reads "start, end" (SD 2.x/clip_g: then "!" padding)
    assert third[:2] == [BOS, EOS] and set(third[2:]) == {pad_id}
    # 75 tokens (or none): one window, exactly the usual tokenization
    plain = tok([words(100)], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(window_ids(tok, [words(100)], None), plain)
    assert torch.equal(window_ids(tok, [words(100)], 75), plain)


def test_windows_are_encoded_one_by_one_and_joined(sd1):
    enc = encoder_of(sd1, max_token_length=150)
    ids = enc.tokenize([words(100)])
    assert ids.shape == (1, 1, 154)
    with torch.no_grad():
        hidden = enc(ids)[0]
        w1, w2 = (sd1.text_encoder(ids[:, 0, i * 77:(i + 1) * 77])[0] for i in range(2))
    assert hidden.shape == (1, 152, 32)  # start, 2 x 75, end
    assert torch.allclose(hidden[:, 0], w1[:, 0]) and torch.allclose(hidden[:, 1:76], w1[:, 1:76])
    assert torch.allclose(hidden[:, 76:151], w2[:, 1:76]) and torch.allclose(hidden[:, -1], w2[:, -1])
    assert torch.equal(join_windows(w1, 1), w1)


def test_a_placeholder_after_token_77_gets_its_vectors_trained(sd1):
    from tiforge.toy.tiny import _tiny_text_encoder

    def gradient(max_token_length):
        tiny = SimpleNamespace(tokenizer=load_clip_tokenizer(), text_encoder=_tiny_text_encoder(32, EOS, "quick_gelu"))
        enc = encoder_of(tiny, max_token_length=max_token_length)
        enc.add_placeholder("<far>", {"text_encoder": torch.randn(2, 32)})
        hidden, _ = enc.encode([words(90) + " <far>"])
        hidden.square().sum().backward()
        return enc.trainable()[0].grad

    assert gradient(150).abs().sum() > 0
    grad = gradient(None)
    assert grad is None or grad.abs().sum() == 0  # cut off at 77 tokens: nothing reaches it


def test_sdxl_pooled_output_comes_from_the_first_window():
    pipe = build_tiny_pipeline("sdxl")
    encoders = [("clip_l", pipe.tokenizer, pipe.text_encoder), ("clip_g", pipe.tokenizer_2, pipe.text_encoder_2)]
    long, short = PromptEncoder(encoders, sdxl=True, max_token_length=150), PromptEncoder(encoders, sdxl=True)
    with torch.no_grad():
        hidden, pooled = long.encode([words(100)])
        _, first_pooled = short.encode([words(100)])
    assert hidden.shape == (1, 152, 32 + 64)
    assert torch.allclose(pooled, first_pooled, atol=1e-6)


def test_the_caption_length_check_uses_the_configured_window():
    from tiforge.data.sources import DatasetError
    from tiforge.training.start_checks import check_caption_lengths, token_window

    tok = load_clip_tokenizer()
    far = tok.encode("<far>", add_special_tokens=False)  # not a placeholder, just ids to look for
    record = SimpleNamespace(caption=words(90) + " <far>", name="img.png")
    dataset = SimpleNamespace(record_of=[0], records=[record], seed=0, captioner=lambda c, rng, r: c)
    with pytest.raises(DatasetError, match="longer than 77 tokens") as refused:
        check_caption_lengths(dataset, tok, far)
    assert (f"or encode longer captions with max_token_length: 150 or 225 (kohya's --max_token_length); the longest of "
            f"them needs {90 + len(far)} tokens: max_token_length: 150 fits it") in str(refused.value)
    longer = SimpleNamespace(**{**vars(dataset), "records": [SimpleNamespace(caption=words(160) + " <far>", name="b")]})
    with pytest.raises(DatasetError, match=r"max_token_length: 225 \(kohya's --max_token_length\); the longest of "
                                           rf"them needs {160 + len(far)} tokens: max_token_length: 225 fits it"):
        check_caption_lengths(longer, tok, far, token_window(150))
    longer.records[0].caption = words(230) + " <far>"
    with pytest.raises(DatasetError, match="more than even max_token_length: 225 holds"):
        check_caption_lengths(longer, tok, far)
    with pytest.raises(DatasetError) as refused:
        check_caption_lengths(longer, tok, far, token_window(225))
    assert "max_token_length" not in str(refused.value)
    assert token_window(150) == 152
    check_caption_lengths(dataset, tok, far, token_window(150))
    # and `tiforge dataset check` shows the whole caption against the wider window
    from tiforge.data.checks import token_report

    assert token_report(tok, record.caption, set(far))[0].endswith(" ...")
    shown, count = token_report(tok, record.caption, set(far), token_window(150))
    assert count == 1 + 90 + len(far) + 1 and not shown.endswith(" ...") and shown.endswith(f"[{far[-1]}] 49407")


# ------------------------------------------------------------------------------------- noise, timesteps


def draws(settings: NoiseSettings, seed=5, latents=None):
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) if latents is None else latents
    return draw_training_noise(NoiseSource(seed, "cpu"), latents, settings, 1000)


def test_with_every_option_off_the_draws_are_tiforges_usual_ones():
    noise, input_noise, t = draws(NoiseSettings())
    source = NoiseSource(5, "cpu")
    assert torch.equal(noise, source.randn((2, 4, 8, 8))) and torch.equal(t, source.timesteps(2, 1000))
    assert input_noise is noise


def test_noise_offset_adds_one_constant_per_sample_and_channel():
    plain, _, _ = draws(NoiseSettings())
    noise, _, _ = draws(NoiseSettings(noise_offset=0.1))
    shift = noise - plain
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-6)
    assert 0 < shift[:, :, 0, 0].abs().max() < 0.5
    # adaptive: the offset grows with |the latent channel's mean|
    bright = torch.full((2, 4, 8, 8), 3.0)
    adaptive, _, _ = draws(NoiseSettings(noise_offset=0.1, adaptive_noise_scale=1.0), latents=bright)
    fixed, _, _ = draws(NoiseSettings(noise_offset=0.1), latents=bright)
    assert torch.allclose(adaptive - plain, (fixed - plain) * 31, atol=1e-4)  # (0.1 + 3) / 0.1


def test_multires_noise_is_spatially_correlated_with_unit_spread():
    noise, _, _ = draws(NoiseSettings(multires_noise_iterations=6, multires_noise_discount=0.8))
    plain, _, _ = draws(NoiseSettings())
    assert abs(noise.std().item() - 1) < 1e-4
    # after the offset, as kohya: the offset is rescaled along with the rest
    both, _, _ = draws(NoiseSettings(noise_offset=5.0, multires_noise_iterations=6))
    assert abs(both.std().item() - 1) < 1e-4

    def neighbour_correlation(x):
        return torch.corrcoef(torch.stack([x[..., :-1].flatten(), x[..., 1:].flatten()]))[0, 1]

    assert neighbour_correlation(noise) > neighbour_correlation(plain) + 0.2


def test_timesteps_come_from_the_configured_range():
    _, _, t = draws(NoiseSettings(min_timestep=500, max_timestep=510))
    source = NoiseSource(0, "cpu")
    many = source.timesteps(4000, 510, 500)
    assert many.min() == 500 and many.max() == 509
    assert torch.equal(source.timesteps(3, 700, 700), torch.full((3,), 700))
    assert ((t >= 500) & (t < 510)).all()


def test_input_perturbation_noises_the_input_but_the_target_stays():
    plain, _, t_plain = draws(NoiseSettings())
    noise, input_noise, t = draws(NoiseSettings(ip_noise_gamma=0.1))
    assert torch.equal(noise, plain) and torch.equal(t, t_plain)
    assert 0 < (input_noise - noise).std() < 0.2

    seen = {}

    def unet(noisy, timesteps, hidden, return_dict=False):
        seen["noisy"] = noisy
        return (torch.zeros_like(noisy),)

    sched = DDPMScheduler()
    latents = torch.randn(2, 4, 8, 8)
    denoising_loss(unet, sched, latents, None, prediction_type="epsilon", min_snr_gamma=None, noise=noise,
                   timesteps=t, input_noise=input_noise)
    assert torch.allclose(seen["noisy"], sched.add_noise(latents, input_noise, t))


def test_noise_with_options_is_reproducible_and_resumable():
    settings = NoiseSettings(noise_offset=0.1, noise_offset_random_strength=True, multires_noise_iterations=3,
                             ip_noise_gamma=0.1, ip_noise_gamma_random_strength=True)
    latents = torch.randn(2, 4, 8, 8)
    a, b = NoiseSource(9, "cpu"), NoiseSource(9, "cpu")
    draw_training_noise(a, latents, settings, 1000)
    state = a.state_dict().clone()
    first = draw_training_noise(a, latents, settings, 1000)
    b.load_state_dict(state)
    again = draw_training_noise(b, latents, settings, 1000)
    assert all(torch.equal(x, y) for x, y in zip(first, again))


def test_a_run_with_the_noise_options_resumes_bit_identical(tiny_sd1, image_dir, tmp_path):
    from safetensors.torch import load_file

    from tiforge.config.loading import config_from_dict
    from tiforge.training.recipe import train

    cfg = base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=2, save_every_n_steps=1,
                      train_batch_size=1, noise_offset=0.1, noise_offset_random_strength=True,
                      adaptive_noise_scale=0.05, multires_noise_iterations=3, ip_noise_gamma=0.1,
                      ip_noise_gamma_random_strength=True, min_timestep=100, max_timestep=900, loss_type="huber")
    full = train(config_from_dict(cfg), progress=False)
    expected = load_file(full.embedding_path)["emb_params"].clone()
    half = full.run_dir / "checkpoints" / "checkpoint-step_00000001"
    train(config_from_dict({**cfg, "resume_from_checkpoint": str(half)}), progress=False)
    assert torch.equal(load_file(full.embedding_path)["emb_params"], expected)


def test_zero_terminal_snr_ends_the_schedule_in_pure_noise():
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    before = sched.alphas_cumprod.clone()
    original_snr = snr(sched, torch.arange(1000))
    rescale_zero_terminal_snr(sched)
    assert sched.alphas_cumprod[-1] == 0 and torch.isclose(sched.alphas_cumprod[0], before[0])
    assert (sched.alphas_cumprod[1:] < sched.alphas_cumprod[:-1]).all()
    assert torch.allclose(torch.cumprod(1 - sched.betas, 0), sched.alphas_cumprod, atol=1e-6)
    # as in kohya, the loss weights keep reading the original schedule's SNR
    assert torch.allclose(snr(sched, torch.arange(1000)), original_snr, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ loss


def test_huber_thresholds_per_schedule():
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    t = torch.tensor([0, 999])
    constant = huber_threshold(sched, t, LossSettings(huber_schedule="constant", huber_c=0.2, huber_scale=2))
    assert torch.allclose(constant, torch.tensor([0.4, 0.4]))
    exponential = huber_threshold(sched, t, LossSettings(huber_schedule="exponential", huber_c=0.1))
    assert torch.allclose(exponential, torch.tensor([1.0, 0.1 ** 0.999]), atol=1e-4)
    by_snr = huber_threshold(sched, t, LossSettings(huber_c=0.1))
    assert by_snr[0] > 0.9 and abs(by_snr[1] - 0.1) < 0.02  # faint noise: near l2; mostly noise: c


@pytest.mark.parametrize("loss_type", ["huber", "smooth_l1", "l1"])
def test_robust_losses_are_quadratic_near_zero_and_linear_far_out(loss_type):
    def unet_off_by(d):
        return lambda noisy, t, h, return_dict=False: (torch.full_like(noisy, d),)

    sched = DDPMScheduler()
    settings = LossSettings(loss_type=loss_type, huber_schedule="constant", huber_c=0.1)

    def loss(d):
        return denoising_loss(unet_off_by(d), sched, torch.zeros(1, 4, 4, 4), None, prediction_type="epsilon",
                              min_snr_gamma=None, noise=torch.zeros(1, 4, 4, 4), timesteps=torch.tensor([10]),
                              settings=settings).item()

    c = 0.1
    if loss_type == "l1":
        assert loss(0.01) == pytest.approx(0.01) and loss(10) == pytest.approx(10)
        return
    small = {"huber": 0.01**2, "smooth_l1": 0.01**2 / c}[loss_type]
    large = {"huber": 2 * c * 10, "smooth_l1": 2 * 10}[loss_type]
    assert loss(0.01) == pytest.approx(small, rel=0.01) and loss(10) == pytest.approx(large, rel=0.02)


def test_snr_based_sample_weights():
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    t = torch.tensor([0, 100, 900])
    s = snr(sched, t).clamp(max=1000)
    debiased = sample_weights(sched, t, "epsilon", None, LossSettings(debiased_estimation_loss=True))
    assert torch.allclose(debiased, 1 / s.sqrt())
    debiased_v = sample_weights(sched, t, "v_prediction", None, LossSettings(debiased_estimation_loss=True))
    assert torch.allclose(debiased_v, 1 / (s + 1))
    like_noise = sample_weights(sched, t, "v_prediction", None, LossSettings(scale_v_pred_loss_like_noise_pred=True))
    assert torch.allclose(like_noise, s / (s + 1))
    both = sample_weights(sched, t, "v_prediction", 5.0, LossSettings(debiased_estimation_loss=True))
    assert torch.allclose(both, s.clamp(max=5) / (snr(sched, t) + 1) / (s + 1))
    assert sample_weights(sched, t, "epsilon", None, LossSettings()) is None


def test_scale_v_pred_loss_on_an_epsilon_run_is_refused(sd1):
    from tiforge.config.schema import SdTextualInversionConfig
    from tiforge.training.conditioning_setup import check_conditioning_options

    config = SdTextualInversionConfig.model_construct(model="m", scale_v_pred_loss_like_noise_pred=True)
    parts = SimpleNamespace(is_sdxl=False, family="SD 1.x", text_encoder=sd1.text_encoder)
    with pytest.raises(ConfigError, match="scale_v_pred_loss_like_noise_pred: only applies to v-prediction"):
        check_conditioning_options(parts, config, "epsilon")
    check_conditioning_options(parts, config, "v_prediction")


# ---------------------------------------------------------------------------------------- end to end


KOHYA_SEED = """--dataset_config={toml} --output_dir={out} --output_name=mychar --save_model_as=safetensors
  --prior_loss_weight=1.0 --max_train_steps=1600 --learning_rate=1e-6 --optimizer_type="AdamW8bit" --xformers
  --mixed_precision="fp16" --cache_latents --gradient_checkpointing --token_string=mychar4 --init_word=cute
  --num_vectors_per_token=4 --pretrained_model_name_or_path={model}"""


def test_seed_001_with_sd2_options_trains_a_v_prediction_model(tiny_sd2, tmp_path, capsys, caplog):
    data = make_images(tmp_path / "train" / "10_mychar4 1girl", n=2)
    toml = write_kohya_dataset_toml(tmp_path / "dataset.toml", data, "mychar4 1girl", num_repeats=1)
    line = shlex.split(KOHYA_SEED.format(toml=toml, out=tmp_path / "out", model=tiny_sd2))
    line += ["--v2", "--v_parameterization", "--clip_skip=2", "--max_token_length=225", "--max_train_steps=2",
             "--report_to=none", "--noise_offset=0.05", "--loss_type=huber", "--debiased_estimation_loss",
             "--validation_prompts=mychar4 " + words(90) + " mychar4", "--num_validation_images_per_prompt=1",
             "--num_validation_inference_steps=2"]
    with caplog.at_level("INFO", logger="tiforge"):
        assert main(["train", *line, "-q"]) == 0, capsys.readouterr().err
    assert "SD 2.x model" in caplog.text and "prediction_type v_prediction" in caplog.text
    assert "clip_skip 2 on SD 2.x" in caplog.text
    out = tmp_path / "out"
    with safe_open(str(out / "mychar.safetensors"), "pt") as f:
        meta = f.metadata()
        assert f.get_tensor("emb_params").shape == (4, 48)
    assert meta["tiforge.clip_skip"] == meta["ss_clip_skip"] == "2" and meta["tiforge.max_token_length"] == "225"
    assert list(out.glob("validation/final/*.png"))

    # `tiforge generate` encodes the prompt as the embedding was trained (clip skip 2, 225 tokens)
    from tiforge.embeddings import generate as gen

    seen = {}
    real = gen.prompt_arguments

    def spy(pipe, prompt, negative, clip_skip, max_token_length):
        seen.update(clip_skip=clip_skip, max_token_length=max_token_length)
        kwargs = real(pipe, prompt, negative, clip_skip, max_token_length)
        seen["shape"] = tuple(kwargs["prompt_embeds"].shape)
        return kwargs

    gen.prompt_arguments = spy
    try:
        assert main(["generate", "--model", str(tiny_sd2), "--embedding", str(out / "mychar.safetensors"),
                     "--prompt", "a mychar " + words(100), "--steps", "2", "--width", "32", "--height", "32",
                     "--out", str(tmp_path / "images")]) == 0
    finally:
        gen.prompt_arguments = real
    assert seen == {"clip_skip": 2, "max_token_length": 225, "shape": (1, 227, 48)}


# ------------------------------------------------------------------------ generate: clip skip, windows


def test_clip_skip_has_one_check_for_train_and_generate(sd1, caplog):
    from tiforge.model.clip_skip import checked_clip_skip

    te = sd1.text_encoder  # 2 layers
    assert checked_clip_skip(2, te, False, "SD 1.x") == 2 and checked_clip_skip(None, te, False, "SD 1.x") is None
    with pytest.raises(ConfigError, match=r"--clip-skip: 3 is more than the text encoder's 2 layers"):
        checked_clip_skip(3, te, False, "SD 1.x", "--clip-skip")
    with pytest.raises(ConfigError, match=r"--clip-skip: 0 is not a clip skip"):
        checked_clip_skip(0, te, False, "SD 1.x", "--clip-skip")
    with caplog.at_level("WARNING", logger="tiforge"):
        assert checked_clip_skip(3, te, True, "SDXL", "--clip-skip") is None
    assert "--clip-skip: SDXL always reads the penultimate layer" in caplog.text


def test_generate_refuses_a_clip_skip_past_the_text_encoder(tiny_sd1, tmp_path, capsys):
    from tiforge.embeddings.files import save_embedding

    emb = save_embedding(tmp_path / "e.safetensors", "<tok>", torch.randn(1, 32))
    args = ["generate", "--model", str(tiny_sd1), "--embedding", str(emb), "--prompt", "a <tok>", "--steps", "1",
            "--out", str(tmp_path / "images")]
    assert main([*args, "--clip-skip", "9"]) == 2
    assert "--clip-skip: 9 is more than the text encoder's 2 layers" in capsys.readouterr().err
    assert main([*args, "--clip-skip", "0"]) == 2
    assert "--clip-skip: 0 is not a clip skip" in capsys.readouterr().err
    recorded = save_embedding(tmp_path / "r.safetensors", "<tok>", torch.randn(1, 32), {"tiforge.clip_skip": "5"})
    assert main([*args[:4], str(recorded), *args[5:]]) == 2
    assert f"clip_skip recorded in {recorded}: 5 is more than" in capsys.readouterr().err
    assert not (tmp_path / "images").exists()


def test_generate_says_how_it_encodes_warns_of_cut_prompts_and_never_overwrites(tiny_sd1, tmp_path, caplog):
    from tiforge.embeddings.files import save_embedding

    emb = save_embedding(tmp_path / "e.safetensors", "<tok>", torch.randn(1, 32), {"tiforge.clip_skip": "2"})
    out = tmp_path / "images"
    args = ["generate", "--model", str(tiny_sd1), "--embedding", str(emb), "--steps", "1", "--width", "32",
            "--height", "32", "--out", str(out)]
    with caplog.at_level("INFO", logger="tiforge"):
        assert main([*args, "--prompt", "a <tok> " + words(98)]) == 0
    assert f"clip_skip 2: as {emb} was trained" in caplog.text
    assert ("the prompt is 100 tokens (triggers expanded to their vectors' tokens) and the window holds 75: its last "
            "25 tokens are cut off; --max-token-length 150 would fit it") in caplog.text
    first = (out / "0_000.png").read_bytes()
    caplog.clear()
    with caplog.at_level("INFO", logger="tiforge"):
        assert main([*args, "--prompt", "a <tok>", "--seed", "0", "--clip-skip", "1"]) == 0
    assert "cut off" not in caplog.text and "clip_skip 2" not in caplog.text
    assert sorted(p.name for p in out.iterdir()) == ["0_000-1.png", "0_000.png"]
    assert (out / "0_000.png").read_bytes() == first
    assert "0_000.png exists; wrote 0_000-1.png (generate never overwrites)" in caplog.text


# ------------------------------------------------------------------- options that do nothing: one warning


@pytest.mark.parametrize("options, expected", [
    ({"huber_c": 0.2, "huber_schedule": "constant"}, "huber_c / huber_schedule: only used by loss_type huber or "
                                                     "smooth_l1, and this run's loss_type is l2; ignored"),
    ({"loss_type": "l1", "huber_scale": 2.0}, "huber_scale: only used by loss_type huber or smooth_l1"),
    ({"loss_type": "huber", "huber_scale": 2.0}, "huber_scale: only scales the constant and exponential"),
    ({"multires_noise_discount": 0.5}, "multires_noise_discount: only used with multires_noise_iterations"),
    ({"noise_offset_random_strength": True}, "noise_offset_random_strength: draws the strength of noise_offset"),
    ({"ip_noise_gamma_random_strength": True}, "ip_noise_gamma_random_strength: draws the strength of ip_noise_gamma"),
])
def test_options_without_effect_get_one_warning_at_the_start(sd1, caplog, options, expected):
    from tiforge.config.schema import SdTextualInversionConfig
    from tiforge.training.conditioning_setup import check_conditioning_options

    parts = SimpleNamespace(is_sdxl=False, family="SD 1.x", text_encoder=sd1.text_encoder)
    with caplog.at_level("WARNING", logger="tiforge"):
        check_conditioning_options(parts, SdTextualInversionConfig.model_construct(model="m", **options), "epsilon")
    assert [r.message for r in caplog.records].count(next(r.message for r in caplog.records)) == 1
    assert expected in caplog.text
    caplog.clear()
    used = {"huber_c": 0.2, "loss_type": "huber", "huber_schedule": "constant", "huber_scale": 2.0,
            "multires_noise_iterations": 3, "multires_noise_discount": 0.5, "noise_offset": 0.05,
            "noise_offset_random_strength": True, "ip_noise_gamma": 0.1, "ip_noise_gamma_random_strength": True}
    defaults = {"huber_c": 0.1, "huber_schedule": "snr", "huber_scale": 1.0, "multires_noise_discount": 0.3}
    with caplog.at_level("WARNING", logger="tiforge"):
        check_conditioning_options(parts, SdTextualInversionConfig.model_construct(model="m", **used), "epsilon")
        # a config written by --print-config holds every field at its default: nothing to warn about
        check_conditioning_options(parts, SdTextualInversionConfig.model_construct(model="m", **defaults), "epsilon")
    assert caplog.text == ""


def test_random_strength_without_its_base_is_accepted_as_kohya_accepts_it(tiny_sd1, image_dir, tmp_path):
    line = ["--pretrained_model_name_or_path", str(tiny_sd1), "--train_data_dir", str(image_dir),
            "--token_string", "tok", "--init_word", "cute", "--output_dir", str(tmp_path), "--max_train_steps", "1"]
    assert main(["train", *line, "--noise_offset_random_strength", "--ip_noise_gamma_random_strength",
                 "--print-config"]) == 0
