"""Aspect-ratio buckets: every image trains at a size close to its own shape, and every batch holds
images of one bucket (so they stack), as kohya's `enable_bucket` and invoke-training's
`aspect_ratio_buckets` do.
"""

from __future__ import annotations

from tiforge.config.data_schema import AspectRatioBucketConfig


def bucket_sizes(cfg: AspectRatioBucketConfig) -> list[tuple[int, int]]:
    """(height, width) pairs of about target_resolution^2 pixels, both sides multiples of divisible_by."""
    area = cfg.target_resolution ** 2
    step = cfg.divisible_by
    sizes = set()
    for side in range(cfg.start_dim - cfg.start_dim % step or step, cfg.end_dim + 1, step):
        other = min(cfg.end_dim, (area // side) // step * step)
        if other >= max(step, cfg.start_dim):
            sizes.add((side, other))
            sizes.add((other, side))
    square = cfg.target_resolution // step * step
    sizes.add((square, square))
    return sorted(sizes)


def choose_bucket(size: tuple[int, int], buckets: list[tuple[int, int]], cfg: AspectRatioBucketConfig) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest the image's (ties: the larger area). With no_upscale,
    an image smaller than the buckets gets a bucket of its own size, rounded down to divisible_by."""
    h, w = size
    if cfg.no_upscale and h * w < cfg.target_resolution ** 2:
        step = cfg.divisible_by
        return (max(step, h // step * step), max(step, w // step * step))
    ratio = w / h
    return min(buckets, key=lambda b: (abs(b[1] / b[0] - ratio), -b[0] * b[1]))
