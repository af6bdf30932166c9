"""Sphinx settings of the static edition (``course_utils.static`` builds with them).

The static edition is a Sphinx site: myst-nb reads the executed notebooks (MyST markdown, so
``$...$`` and ``$$...$$`` become math), the book theme gives each lesson a page with a sidebar
of lessons and previous / next links, and sphinx-mathjax-offline copies MathJax 3 next to the
pages so the formulas are typeset without a network.
"""

project = "Normalization in deep learning"

extensions = ["myst_nb", "sphinx-mathjax-offline"]
myst_enable_extensions = ["dollarmath", "amsmath"]
# course_utils.static executes the notebooks itself (in parallel, widget state dropped)
nb_execution_mode = "off"
# no widget manager from a CDN: a widget's output shows the static image it carries
nb_ipywidgets_js: dict = {}
# and a figure shows as its image, not as ipympl's HTML fallback (which adds a "Figure" label)
nb_mime_priority_overrides = [
    ("html", "application/vnd.jupyter.widget-view+json", None),
    ("html", "image/png", 0),
]

html_theme = "sphinx_book_theme"
html_title = project
html_copy_source = False
html_show_sourcelink = False
html_show_copyright = False
html_show_sphinx = False
html_context = {"default_mode": "light"}
html_theme_options = {
    "home_page_in_toc": True,
    "show_navbar_depth": 1,
    "use_download_button": False,  # it would link to notebook sources the site does not carry
    "use_fullscreen_button": False,
}
exclude_patterns = ["_build", ".doctrees", "**.ipynb_checkpoints"]
