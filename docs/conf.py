"""Sphinx configuration for the toil-threading documentation.

Build from the repository root, with the package installed (autodoc imports the installed
package, so what is documented is what ships):

    pip install . -r docs/requirements.txt
    sphinx-build -W --keep-going -n -b html docs build/docs
"""

import toil_threading

project = "toil-threading"
author = "toil-threading maintainers"
copyright = "toil-threading maintainers"
version = release = toil_threading.__version__

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown"}
root_doc = "index"

# Pages are Markdown (MyST); headings get anchors down to the third level, so a page
# can link to a section of another as page.md#section.
myst_heading_anchors = 3
myst_enable_extensions = ["deflist"]

# The reference is written from the docstrings of the public names; members appear in
# the order the source gives them, and signatures keep their annotations.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

# Nitpicky: every reference must resolve, with two kinds of exception.  The build reaches
# no network, so the standard library's types (named in signatures and docstrings) have
# no inventory to resolve against: they are listed.  And a signature may name a type of
# a private module (StrPath, str or os.PathLike[str]; a mount table's entry): those are
# not documented, and matched by pattern so that renaming a private module needs no
# change here.  Anything else unresolved fails the build.
nitpicky = True
nitpick_ignore = [
    ("py:class", "AbstractContextManager"),  # contextlib's, in global_mutex's signature
    ("py:class", "logging.Logger"),
    ("py:class", "threading.Lock"),
    ("py:class", "collections.abc.AsyncIterator"),  # in toil_threading.aio's signatures
    ("py:class", "contextlib.AbstractAsyncContextManager"),
]
nitpick_ignore_regex = [("py:class", r"StrPath|toil_threading\._\w+\.\w+")]

html_theme = "alabaster"
html_title = f"toil-threading {release}"
html_theme_options = {
    "description": "Toil's toil.lib.threading, compiled and hardened",
    "github_user": "toil-threading",
    "github_repo": "toil-threading",
    "github_button": False,
    "fixed_sidebar": True,
}
