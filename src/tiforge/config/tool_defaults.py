"""The same command line trains the same thing: a run given in another tool's flags gets that tool's
own defaults (its `DEFAULTS` table in `config.peer_flags`) wherever the user did not say otherwise,
instead of invoke-training's."""

from __future__ import annotations

import logging
from typing import Any

from tiforge.config.dotted import MISSING, lookup, set_dotted

log = logging.getLogger("tiforge")
def apply_tool_defaults(data: dict, tool_name: str) -> dict[str, Any]:
    """Fill `data` (the user's settings, already merged) with the tool's defaults where it says nothing;
    returns what was filled in, and says so in the log."""
    from tiforge.config.peer_flags import DIALECTS

    tool = next(t for t in DIALECTS if t.NAME == tool_name)
    filled: dict[str, Any] = {}
    from_toml = _set_by_dataset_toml(data)
    for path, value in tool.DEFAULTS.items():
        if lookup(data, path) is not MISSING:
            continue
        if path in from_toml:  # the dataset .toml's own value is what trains: no default to name
            set_dotted(data, path, from_toml[path])
            continue
        if any(lookup(data, other) not in (MISSING, None) for other in tool.DEFAULTS_UNLESS.get(path, ())):
            continue
        if path.startswith("data_loader.dataset.") and not isinstance(lookup(data, "data_loader.dataset"), dict):
            continue  # no dataset on the command line: its own message says what is missing
        set_dotted(data, path, value)
        filled[path] = value
    if filled:
        log.info("the defaults of %s apply where the command line does not say: %s", tool.TITLE,
                 ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in filled.items()))
    return filled


def _set_by_dataset_toml(data: dict) -> dict[str, Any]:
    """The fields a kohya dataset .toml (--dataset_config) sets itself; it wins over the command line, as in
    kohya. An unreadable file gives nothing here: the dataset's own check names what is wrong with it."""
    path = lookup(data, "data_loader.dataset.config_path")
    if path is MISSING or not path:
        return {}
    from tiforge.data.kohya_toml import KohyaDatasetError, read_kohya_dataset_config

    try:
        first = read_kohya_dataset_config(path)[0]
    except (KohyaDatasetError, IndexError, OSError):
        return {}
    return {} if first.batch_size is None else {"train_batch_size": first.batch_size}
