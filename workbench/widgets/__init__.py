"""Notebook views of results computed elsewhere; widgets hold no science.

One module per widget, each an anywidget whose front end (an ES module and its CSS) lives in
the top-level `widgets/` folder (`workbench/_widgets` in a wheel). Every widget also carries
a static `text/html` rendering in its display data, so an executed notebook and its
`jupyter nbconvert --to html` export show it without a kernel or JavaScript.

- `heatmap`: `TokenHeatmap` (one token sequence coloured by value) and `FeatureContexts`
  (several rows on one scale, e.g. a feature's top-activating contexts).

Example::

    TokenHeatmap(tokens=["The", " cat", " sat"], values=[0.0, 2.5, 1.0], title="feature 7")
    FeatureContexts.from_lists(top_tokens, top_values, labels=[f"doc {d}" for d in docs])
"""

from workbench.widgets.heatmap import FeatureContexts, TokenHeatmap

__all__ = ["FeatureContexts", "TokenHeatmap"]
