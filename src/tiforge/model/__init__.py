"""The frozen model: loading, placeholder tokens, text conditioning, the denoising loss."""
