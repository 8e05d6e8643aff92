"""
Sphinx configuration of SlaveAPI's documentation.

Needs nothing but Sphinx itself: no extensions, and the version is read from
slaveapi/__init__.py as text, so building the docs imports no SlaveAPI code
(and none of its dependencies). Build with ``make -C docs html``.
"""

import os
import re

_HERE = os.path.dirname(os.path.abspath(__file__))


def _version() -> str:
    with open(os.path.join(_HERE, "..", "slaveapi", "__init__.py"), encoding="utf-8") as handle:
        match = re.search(r'^__version__\s*=\s*"([^"]+)"', handle.read(), re.MULTILINE)
    return match.group(1) if match else "unknown"


project = "SlaveAPI"
author = "SlaveAPI contributors"
copyright = "2014-2026, SlaveAPI contributors"
release = _version()
version = ".".join(release.split(".")[:2])

extensions: list[str] = []
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]
highlight_language = "none"
pygments_style = "sphinx"

html_title = f"SlaveAPI {release}"
html_static_path: list[str] = []
