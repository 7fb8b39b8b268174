"""Gradient flow, tested rather than assumed: with fixed noise and timesteps the loss on a fixed
batch goes down, the new vectors move, and nothing else does."""

import torch

from tiforge.loss import denoising_loss, min_snr_weights, sample_latents, snr, training_target
from tiforge.model_loading import load_sd_components
from tiforge.tokens import add_placeholder, initial_vectors, install_placeholder_embedding


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


def _fixed_batch_training(model_dir, steps=30, lr=5e-2):
    torch.manual_seed(0)
    parts = load_sd_components(str(model_dir))
    for m in (parts.unet, parts.vae, parts.text_encoder):
        m.requires_grad_(False)
    frozen_before = {
        name: p.detach().clone()
        for m in (parts.unet, parts.vae, parts.text_encoder)
        for name, p in m.named_parameters(prefix=type(m).__name__)
    }
    table = parts.text_encoder.get_input_embeddings().weight
    ph = add_placeholder(parts.tokenizer, "<thing>", 2)
    vectors = initial_vectors(parts.tokenizer, table, num_vectors=2, initializer_token="toy")
    emb = install_placeholder_embedding(parts.text_encoder, ph, vectors)
    start = emb.vectors.detach().clone()
    # weight decay on: it must reach only the new vectors
    opt = torch.optim.AdamW([emb.vectors], lr=lr, weight_decay=0.1)
    ids = parts.tokenizer([ph.expand("a photo of a <thing>")] * 2, padding="max_length", max_length=77,
                          return_tensors="pt").input_ids
    latents = torch.randn(2, 4, 4, 4)
    noise = torch.randn(2, 4, 4, 4)
    timesteps = torch.tensor([300, 700])
    pred_type = parts.noise_scheduler.config.prediction_type
    losses = []
    for _ in range(steps):
        hidden = parts.text_encoder(ids)[0]
        loss = denoising_loss(parts.unet, parts.noise_scheduler, latents, hidden, prediction_type=pred_type,
                              min_snr_gamma=5.0, noise=noise, timesteps=timesteps)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return parts, emb, start, frozen_before, losses


def _assert_only_vectors_moved(parts, emb, start, frozen_before, losses):
    assert losses[-1] < losses[0] * 0.99, f"loss did not go down: {losses[0]:.5f} -> {losses[-1]:.5f}"
    assert not torch.equal(emb.vectors.detach(), start), "the new vectors did not move"
    for m in (parts.unet, parts.vae, parts.text_encoder):
        for name, p in m.named_parameters(prefix=type(m).__name__):
            if p is emb.vectors:
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
