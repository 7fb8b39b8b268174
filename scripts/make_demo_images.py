"""Regenerates the demo's bundled sample images (src/tiforge/assets/demo_images/).

Six 96x96 pictures of one made-up object (an orange ring with a teal dot) on varied backgrounds,
in varied sizes and positions: the "concept" the demo teaches. Deterministic.
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parents[1] / "src" / "tiforge" / "assets" / "demo_images"


def main() -> None:
    rng = np.random.default_rng(7)
    OUT.mkdir(parents=True, exist_ok=True)
    for i in range(6):
        bg = tuple(int(c) for c in rng.integers(40, 220, size=3))
        im = Image.new("RGB", (96, 96), bg)
        d = ImageDraw.Draw(im)
        r = int(rng.integers(22, 36))
        cx, cy = (int(v) for v in rng.integers(r + 4, 96 - r - 4, size=2))
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(240, 130, 20))
        d.ellipse([cx - r // 2, cy - r // 2, cx + r // 2, cy + r // 2], fill=bg)
        d.ellipse([cx - r // 5, cy - r // 5, cx + r // 5, cy + r // 5], fill=(20, 170, 160))
        im.save(OUT / f"toy_{i}.png", optimize=True)


if __name__ == "__main__":
    main()
