"""Gradient flow, tested rather than assumed: with fixed noise and timesteps the loss on a fixed
batch goes down, the new vectors move, and nothing else does."""

import torch

from tiforge.model.loss import denoising_loss, min_snr_weights, sample_latents, snr, training_target
from tiforge.model.loading import load_sd_components
from tiforge.model.text_conditioning import PromptEncoder, sdxl_time_ids, unet_conditioning
from tiforge.model.placeholders import initial_vectors


def test_v_prediction_target_is_velocity():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(prediction_type="v_prediction")
    x, n, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    a = sched.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    s = (1 - sched.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    assert torch.allclose(training_target(sched, x, n, t, "v_prediction"), a * n - s * x, atol=1e-6)
    assert torch.equal(training_target(sched, x, n, t, "epsilon"), n)


def test_min_snr_weights_cap_low_noise_steps():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler()
    t = torch.tensor([1, 500, 999])
    s = snr(sched, t)
    w = min_snr_weights(sched, t, 5.0, "epsilon")
    assert torch.allclose(w, torch.clamp(s, max=5.0) / s)
    assert w[0] < 0.01 and torch.isclose(w[2], torch.tensor(1.0))
    wv = min_snr_weights(sched, t, 5.0, "v_prediction")
    assert torch.allclose(wv, torch.clamp(s, max=5.0) / (s + 1))


def test_sample_latents_from_cached_distribution():
    mean, logvar = torch.randn(1, 4, 2, 2), torch.full((1, 4, 2, 2), -60.0)
    out = sample_latents(torch.cat([mean, logvar], 1), 0.5)
    assert torch.allclose(out, mean * 0.5, atol=1e-5)


def _fixed_batch_training(model_dir, sdxl=False, steps=30, lr=5e-2):
    torch.manual_seed(0)
    parts = load_sd_components(str(model_dir), sdxl=sdxl)
    for m in parts.frozen_modules:
        m.requires_grad_(False)
    frozen_before = {
        name: p.detach().clone() for i, m in enumerate(parts.frozen_modules) for name, p in m.named_parameters(prefix=str(i))
    }
    encoder = PromptEncoder.of(parts)
    vectors = {
        name: initial_vectors(tok, te.get_input_embeddings().weight, num_vectors=2, initializer_token="toy")
        for name, tok, te in parts.text_encoders
    }
    ph = encoder.add_placeholder("<thing>", vectors)
    start = [v.detach().clone() for v in encoder.trainable()]
    # weight decay on: it must reach only the new vectors
    opt = torch.optim.AdamW(encoder.trainable(), lr=lr, weight_decay=0.1)
    ids = encoder.tokenize([ph.expand("a photo of a <thing>")] * 2)
    batch = {"original_size": torch.tensor([[48, 64], [40, 40]]), "crop_top_left": torch.tensor([[0, 8], [0, 0]]),
             "target_size": torch.tensor([[32, 32], [32, 32]])}
    latents = torch.randn(2, 4, 4, 4)
    noise = torch.randn(2, 4, 4, 4)
    timesteps = torch.tensor([300, 700])
    pred_type = parts.noise_scheduler.config.prediction_type
    losses = []
    for _ in range(steps):
        hidden, unet_kwargs = unet_conditioning(encoder, ids, batch)
        loss = denoising_loss(parts.unet, parts.noise_scheduler, latents, hidden, prediction_type=pred_type,
                              min_snr_gamma=5.0, noise=noise, timesteps=timesteps, unet_kwargs=unet_kwargs)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return parts, encoder, start, frozen_before, losses


def _assert_only_vectors_moved(parts, encoder, start, frozen_before, losses):
    assert losses[-1] < losses[0] * 0.99, f"loss did not go down: {losses[0]:.5f} -> {losses[-1]:.5f}"
    trainable = encoder.trainable()
    for name, vectors, before in zip(encoder.names, trainable, start):
        assert not torch.equal(vectors.detach(), before), f"the new vectors of {name} did not move"
    for i, m in enumerate(parts.frozen_modules):
        for name, p in m.named_parameters(prefix=str(i)):
            if any(p is t for t in trainable):
                continue
            name = name.replace("token_embedding.base.", "token_embedding.")
            assert torch.equal(p.detach(), frozen_before[name]), f"{name} changed"
            assert p.grad is None, f"{name} received a gradient"


def test_gradient_flow_sd1(tiny_sd1):
    _assert_only_vectors_moved(*_fixed_batch_training(tiny_sd1))


def test_gradient_flow_sd2_v_prediction(tiny_sd2):
    result = _fixed_batch_training(tiny_sd2)
    assert result[0].noise_scheduler.config.prediction_type == "v_prediction"
    _assert_only_vectors_moved(*result)


def test_gradient_flow_sdxl_reaches_both_encoders_and_nothing_else(tiny_sdxl):
    result = _fixed_batch_training(tiny_sdxl, sdxl=True)
    assert result[1].names == ["clip_l", "clip_g"] and [v.shape[1] for v in result[1].trainable()] == [32, 64]
    _assert_only_vectors_moved(*result)


def test_sdxl_size_and_crop_ids_match_diffusers(tiny_sdxl):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl, local_files_only=True)
    theirs = pipe._get_add_time_ids((48, 64), (0, 8), (32, 32), dtype=torch.float32,
                                    text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    ours = sdxl_time_ids(torch.tensor([[48, 64]]), torch.tensor([[0, 8]]), (32, 32)).float()
    assert torch.equal(ours, theirs)
