"""What to tell a user about a flag tiforge does not know: that it is another tool's flag tiforge does
not take, or the known flag it most likely misspells."""

from __future__ import annotations

import difflib


def unknown_flag_message(name: str, known: list[str]) -> str:
    from tiforge.config.peer_flags import DIALECTS

    for tool in DIALECTS:
        if name in getattr(tool, "KNOWN_NAMES", ()):
            return (f"--{name}: a flag of {tool.TITLE} that tiforge does not support; remove it "
                    "(`tiforge train --help` lists the flags tiforge takes)")
    close = difflib.get_close_matches(name, known, n=1)
    return f"--{name}: unknown flag" + (f" (did you mean --{close[0]}?)" if close else "")
