"""Notebook views of results computed elsewhere; widgets hold no science.

One module per widget, each an anywidget whose front end (an ES module and its CSS) lives in
the top-level `widgets/` folder (`workbench/_widgets` in a wheel). Every widget also carries
a static `text/html` rendering in its display data, so an executed notebook and its
`jupyter nbconvert --to html` export show it without a kernel or JavaScript.

- `heatmap`: `TokenHeatmap` (one token sequence coloured by value) and `FeatureContexts`
  (several rows on one scale, e.g. a feature's top-activating contexts).
- `card`: `FeatureCard`, one feature's statistics, histograms, logit effects and example
  groups, drawn from a CARD dict (`FeatureStats.card(i)`).
- `browser`: `FeatureBrowser`, a searchable, sortable list of features with the selected
  one's card, and "which features fire here" on a text (`show_text`).
- `ablation`: `AblationView`, per token a feature's activation and what ablating it does to
  the token's log-likelihood (workbench.ablation.feature_ablation), full and direct.
- `steering`: `SteeringPanel`, ipywidgets sliders around a `run(coefficients)` callback,
  clean and steered replies side by side with KL and log-likelihoods.
- `traits`: `Transcript` and `TraitChips` (replies with their traits as chips that open the
  feature's card) and `PromptHeatmap` (signed values over prompt tokens, e.g. prompt attribution).

Python draws each widget's markup; its ES module only adds behaviour (hover, clicks, swapping
in new markup when Python redraws). `workbench.site.write_site` writes the same list and cards
as a static site.

Example::

    TokenHeatmap(tokens=["The", " cat", " sat"], values=[0.0, 2.5, 1.0], title="feature 7")
    FeatureContexts.from_lists(top_tokens, top_values, labels=[f"doc {d}" for d in docs])
    FeatureCard.from_stats(stats, 1767)
    FeatureBrowser(stats, selected=1767)
    AblationView([full.to_dict(), direct.to_dict()], feature_cards=stats.card)
    SteeringPanel(lambda c, temperature, seed: compare_steering(...).to_dict(), [1767])
    TraitChips(generation.reply_text, reply_traits(model, sae, generation), cards=stats.card)
    PromptHeatmap.from_attribution(prompt_attribution(model, sae, prompt_ids, reply_ids, 1767))
"""

from workbench.widgets.ablation import AblationView
from workbench.widgets.browser import FeatureBrowser
from workbench.widgets.card import FeatureCard
from workbench.widgets.heatmap import FeatureContexts, TokenHeatmap
from workbench.widgets.steering import SteeringPanel
from workbench.widgets.traits import PromptHeatmap, TraitChips, Transcript

__all__ = ["AblationView", "FeatureBrowser", "FeatureCard", "FeatureContexts", "PromptHeatmap", "SteeringPanel",
           "TokenHeatmap", "TraitChips", "Transcript"]
