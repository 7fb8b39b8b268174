"""Training data: sources (folders, JSONL, HF datasets, kohya .toml), captions, images, buckets, checks, latent cache."""
