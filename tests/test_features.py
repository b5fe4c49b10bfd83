"""Feature statistics from a store: top-activating contexts against a brute-force search."""

from __future__ import annotations

import torch

from workbench.capture import capture
from workbench.features import top_activating_contexts
from workbench.sae import SAE, SAEConfig


def test_top_activating_contexts_match_brute_force(tmp_path, llama_tiny):
    contexts = torch.randint(3, 60, (12, 10), generator=torch.Generator().manual_seed(3))
    contexts[:, 0] = 0
    hookpoint = "blocks.1.hook_mlp_out"
    store = capture(llama_tiny, [hookpoint], contexts, tmp_path / "s", batch_size=4, contexts_per_shard=4,
                    progress=False)
    sae = SAE.from_config(SAEConfig("relu", d_in=32, d_sae=16, hook_name=hookpoint))
    acts = sae.encode(store.rows(hookpoint, 0, store.n_rows).float()).feature_acts
    locations = store.locations()
    features = [0, 5, 11]

    found = top_activating_contexts(sae, store, features, n_examples=3, before=4, after=2, batch_size=7)
    for feature in features:
        expected = acts[:, feature].topk(3)
        examples = found[feature]
        positive = int((expected.values > 0).sum())
        assert len(examples) == positive
        for example, value, row in zip(examples, expected.values.tolist(), expected.indices.tolist()):
            assert example.row == row and abs(example.activation - value) < 1e-5
            context, position = locations[row].tolist()
            assert (example.context, example.position) == (context, position)
            start = max(0, position - 4)
            assert torch.equal(example.tokens, contexts[context, start:position + 3])
            assert example.focus == position - start
            assert abs(float(example.values[example.focus]) - value) < 1e-5
            if start == 0:
                assert example.values[0] == 0  # BOS was not captured
