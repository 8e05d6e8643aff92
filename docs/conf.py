"""
Sphinx configuration of SlaveAPI's documentation.

Build with ``make docs`` (warnings are errors) into ``build/docs``. The API
reference (``reference.rst``) is generated from the OpenAPI document by the
local extension in ``_ext/slaveapi_docs.py``, which imports SlaveAPI and its
dependencies: build with the project's virtualenv. The repository root is put
on ``sys.path`` so that a checkout builds even before ``pip install -e``.
"""

import os
import re
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_HERE, "_ext"))
if os.path.dirname(_HERE) not in sys.path:
    sys.path.append(os.path.dirname(_HERE))


def _version() -> str:
    with open(os.path.join(_HERE, "..", "slaveapi", "__init__.py"), encoding="utf-8") as handle:
        match = re.search(r'^__version__\s*=\s*"([^"]+)"', handle.read(), re.MULTILINE)
    return match.group(1) if match else "unknown"


project = "SlaveAPI"
author = "SlaveAPI contributors"
copyright = "2014-2026, SlaveAPI contributors"
release = _version()
version = ".".join(release.split(".")[:2])

extensions = ["slaveapi_docs"]
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_ext"]
highlight_language = "none"
pygments_style = "sphinx"

html_title = f"SlaveAPI {release}"
html_static_path: list[str] = []
