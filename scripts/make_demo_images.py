"""Regenerates the demo's bundled sample images (src/tiforge/assets/demo_images/).

Six 32x32 pictures of purple stars from the toy world (tiforge.toy.world): the combination the
pretrained toy model has never seen, which the demo teaches it. Deterministic.
"""

import shutil
from pathlib import Path

from tiforge.toy.model import write_concept_images

OUT = Path(__file__).resolve().parents[1] / "src" / "tiforge" / "assets" / "demo_images"


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    write_concept_images("purple-star", OUT, n=6, seed=0)


if __name__ == "__main__":
    main()
