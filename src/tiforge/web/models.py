"""The model picker's list: the same folders the console UI searches, then the shipped toy models."""

from __future__ import annotations


def local_models() -> list[dict]:
    from tiforge.frontends.console_ui import find_models, model_folders
    from tiforge.model.loading import is_sdxl_model
    from tiforge.toy.model import toy_model_dir

    found = [{"name": path.rstrip("/").rsplit("/", 1)[-1], "path": path,
              "family": "sdxl" if is_sdxl_model(path, online=False) else "sd"} for path in find_models(model_folders())]
    for family in ("sd", "sdxl"):
        found.append({"name": f"tiforge toy model ({family.upper()})", "path": str(toy_model_dir(family)), "family": family})
    return found
