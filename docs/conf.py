"""Sphinx configuration of the txmail documentation (built with warnings as errors)."""

from __future__ import annotations

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The checkout's package (src/) is what is documented, installed or not;
# docs/_ext holds the local extension (zope_interfaces).
for _path in (os.path.join(_ROOT, "src"), os.path.join(_ROOT, "docs", "_ext")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

project = "txmail"
author = "the txmail authors"
copyright = "the txmail authors"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "zope_interfaces",
]

exclude_patterns = ["_build"]
html_theme = "alabaster"

# -- autodoc -------------------------------------------------------------------
# automodule :members: follows each module's __all__, the public API.
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
}
autodoc_member_order = "bysource"
# Signatures carry the annotations; descriptions stay free of long type reprs.
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autoclass_content = "both"

# -- napoleon (Google-style Args:/Returns:/Raises:) ------------------------------
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True

# Cross-references the docstrings make to things outside this documentation
# (Twisted, zope.interface, the standard library) are not resolved: no
# nitpicky mode, so an unresolved name is plain text rather than a warning.
nitpicky = False
