"""
The one yes/no vocabulary, shared by the ini file and request parameters.

C{1}, C{y}, C{yes}, C{true}, C{on} mean yes and C{0}, C{n}, C{no}, C{false},
C{off} mean no, in any case, with surrounding blanks ignored: the words of
Python's configparser, which 2015-era ini files were written for, and the
C{y}/C{n} the web always took. Nothing else is a yes/no word, and neither is
an empty value.
"""

from __future__ import annotations

from typing import Final

YES: Final = ("1", "y", "yes", "true", "on")
NO: Final = ("0", "n", "no", "false", "off")


def parse_yes_no(raw: str) -> bool | None:
    """C{True} for a yes word, C{False} for a no word, C{None} for anything else."""
    word = raw.strip().lower()
    if word in YES:
        return True
    if word in NO:
        return False
    return None
