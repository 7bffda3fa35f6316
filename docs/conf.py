"""Sphinx configuration of the blpmodels documentation.

Build with ``python -m sphinx -W -b html docs docs/_build/html`` (warnings are errors). The
tutorial gallery runs the scripts in ``docs/gallery`` at build time; they read the shared data
from ``$BLPMODELS_DATA`` (default ``../shared/data``). ``BLPMODELS_DOCS_FAST=1`` runs them with
reduced settings (fewer bootstrap draws and grid points), as CI does.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")
# One BLAS thread: the gallery's fits run their own market threads (see tests/conftest.py).
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")
if os.environ.get("BLPMODELS_DATA", "").strip():
    # A relative data folder (CI passes ../shared/data) is meant from where sphinx was started
    # (the shell's PWD: Sphinx reads this file from docs/, and the gallery runs each script from
    # its own folder), so it is made absolute here.
    _started = Path(os.environ.get("PWD", str(ROOT)))
    _data = Path(os.environ["BLPMODELS_DATA"]).expanduser()
    os.environ["BLPMODELS_DATA"] = str((_started / _data).resolve())
else:
    os.environ["BLPMODELS_DATA"] = str((ROOT.parent / "shared" / "data").resolve())

import blpmodels  # noqa: E402

project = "blpmodels"
author = "blpmodels developers"
copyright = "2026, blpmodels developers"
version = release = blpmodels.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "gallery", "**.ipynb_checkpoints"]
templates_path = ["_templates"]

# ----------------------------------------------------------------------------- API reference
autosummary_generate = True
autosummary_imported_members = False
# No inherited members unless a page asks (autodoc's default). A value here would override the
# page's own option: the BLPResults page lists its role mixins' methods, not statsmodels'.
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "none"  # the numpydoc Parameters sections say the types
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_validation_checks: set[str] = set()
numpydoc_xref_param_type = False

# ----------------------------------------------------------------------------- Markdown pages
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# ----------------------------------------------------------------------------- gallery
FAST = bool(os.environ.get("BLPMODELS_DOCS_FAST", "").strip())
sphinx_gallery_conf = {
    "examples_dirs": ["gallery"],
    "gallery_dirs": ["tutorials"],
    "filename_pattern": r"/plot_",
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": True,
    "min_reported_time": 5,
    "show_memory": False,
    "reset_modules": ("matplotlib",),
}

# ----------------------------------------------------------------------------- HTML
html_theme = "pydata_sphinx_theme"
html_title = f"blpmodels {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": [],
}
html_static_path: list[str] = []
html_show_sourcelink = False


# ----------------------------------------------------------------------------- docstrings
# Docstrings are written for help() as well as for Sphinx: they use |x| for absolute values and
# norms and bare asterisks for significance stars. reST reads |...| as a substitution and a
# lone * or ** as the start of emphasis, so both are escaped outside literals before parsing.
_LITERAL = re.compile(r"(``.*?``|`[^`]*`)")
_LONE_STARS = re.compile(r"(?<![\w*\\])(\*+)(?=[\s,;.)]|$)")


def _escape_plain(text: str) -> str:
    def stars(match: re.Match) -> str:
        bullet = match.group(1) == "*" and not text[: match.start()].strip()
        return match.group(1) if bullet else "\\*" * len(match.group(1))

    return _LONE_STARS.sub(stars, text.replace("|", r"\|"))


def _escape_line(line: str) -> str:
    stripped = line.lstrip()
    if stripped.startswith((">>>", "...", "+-", "|")):
        return line
    parts = _LITERAL.split(line)
    return "".join(part if i % 2 else _escape_plain(part) for i, part in enumerate(parts))


def _escape_docstring(app, what, name, obj, options, lines) -> None:
    in_example = False
    for i, line in enumerate(lines):
        if line.strip().startswith(".. ") and "::" in line:
            in_example = True  # directive blocks (math, code) are left alone
        elif in_example and line.strip() and not line.startswith((" ", "\t")):
            in_example = False
        if not in_example:
            lines[i] = _escape_line(line)


def setup(app) -> None:
    app.connect("autodoc-process-docstring", _escape_docstring, priority=600)
