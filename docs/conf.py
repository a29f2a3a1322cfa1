"""Sphinx configuration for the dpf_sched documentation site.

Build: ``python -m sphinx -W -b html docs docs/_build/html`` (warnings are errors). Nothing is fetched from the
network, and the notebooks are run by the test suite (``pytest --nbmake``), not here. Two things are executed: the
quickstart's own command (``dpf-sched compare --out …``) and the packing page's cheap comparison, so that the plots
those pages show are the ones a reader gets, generated at build time (``docs/_generated/``, git-ignored) rather than
kept in git.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)


#: Comparisons whose ``granted.png`` a page shows: (file under ``_generated/``, ``dpf-sched compare`` arguments).
#: Each is the exact command its page gives, so the picture is what a reader gets by running it.
PLOTS: tuple[tuple[str, list[str]], ...] = (
    ("quickstart-granted.png", ["compare"]),
    (
        "packing-spread-granted.png",
        [
            "compare",
            "--workload",
            "packing-mix",
            "--policies",
            "fcfs,dpf-n,dpf-t,dpack,dpf-pack",
            "--param",
            "N=10",
            "--param",
            "alpha_spread=0,0.5,1",
            "--seeds",
            "0,1,2",
        ],
    ),
)


def _plots() -> None:
    """Run each page's comparison and keep its plot (a few seconds each)."""
    import shutil
    import tempfile

    import matplotlib

    matplotlib.use("Agg")
    from click.testing import CliRunner

    from dpf_sched.cli import main

    for name, args in PLOTS:
        target = os.path.join(os.path.dirname(__file__), "_generated", name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            res = CliRunner().invoke(main, [*args, "--out", tmp, "--no-progress"])
            if res.exit_code != 0:
                raise RuntimeError(f"dpf-sched {' '.join(args)} failed: {res.output}")
            shutil.copyfile(os.path.join(tmp, "granted.png"), target)


_plots()

project = "dpf_sched"
author = "dpf_sched contributors"
copyright = "2026, dpf_sched contributors"
release = "0.1.0"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx_click",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "examples", "Thumbs.db", ".DS_Store"]

# MyST: $...$ math (proofs), ::: fences, heading anchors so that [text](page.md#section) links resolve.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# Autodoc: Google-style docstrings, members in source order, type hints in the description.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
autosummary_generate = False
# The optional integrations import heavy extras; mock them only if they are absent so the site still builds.
autodoc_mock_imports: list[str] = []
for _mod in ("torch", "opacus", "psycopg", "ray"):
    try:
        __import__(_mod)
    except ImportError:
        autodoc_mock_imports.append(_mod)

# Cross-references to third-party types in signatures (numpy, pandas, ...) are not resolved without
# intersphinx, which would need the network; do not let them fail the build.
nitpicky = False

html_theme = "alabaster"
html_static_path: list[str] = []
html_title = "dpf_sched"
