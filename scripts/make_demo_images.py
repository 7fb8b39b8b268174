"""Regenerates the demo's bundled sample images (src/tiforge/assets/demo_images/).

Six 32x32 pictures of rings from the toy world (tiforge.toyworld): the shape the pretrained toy
model can draw but was never told the name of, which the demo teaches it. Deterministic.
"""

import shutil
from pathlib import Path

from tiforge.toy_model import write_concept_images

OUT = Path(__file__).resolve().parents[1] / "src" / "tiforge" / "assets" / "demo_images"


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    write_concept_images("ring", OUT, n=6, seed=0)


if __name__ == "__main__":
    main()
