"""The presence network: symmetry, item-only embedding, variants, checkpoints, model lookup."""

from __future__ import annotations

import itertools
import json
import struct

import numpy as np
import pytest
import torch

from soundsearch.model import network as M
from soundsearch.model import registry
from soundsearch.errors import FeaturizerMismatchError, ModelError
from soundsearch.model.config import ModelConfig
from soundsearch.model.checkpoint import load_model
from soundsearch.model.network import LoadedModel, PresenceNet
from soundsearch.taxonomy import Taxonomy

T, D, C = 5, 12, 8
VARIANTS = list(itertools.product([True, False], [False, True], [True, False]))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_net(siamese=True, per_category=False, attention=True, seed=0, **kw) -> PresenceNet:
    torch.manual_seed(seed)
    cfg = ModelConfig(steps=T, dim=D, n_categories=C, siamese=siamese, per_category=per_category,
                      attention=attention, tower=(16, 16, 16), head=(24, 12), **kw)
    net = PresenceNet(cfg)
    # A few optimiser steps so batch-norm running statistics and weights are not at their init.
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(3):
        a, b = torch.randn(16, T, D, generator=gen), torch.randn(16, T, D, generator=gen)
        target = torch.randint(0, 3, (16, C), generator=gen)
        loss = torch.nn.functional.nll_loss(net.log_probs(a, b).reshape(-1, 3), target.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def loaded(net: PresenceNet, identity="logmel/1:{}") -> LoadedModel:
    rng = np.random.default_rng(1)
    return LoadedModel(
        net=net, config=net.config, taxonomy=Taxonomy.default(),
        featurizer_spec={"name": "logmel", "params": {}}, featurizer_identity=identity,
        norm_mean=rng.normal(size=D).astype(np.float32),
        norm_std=rng.uniform(0.5, 2, size=D).astype(np.float32),
        meta={"seed": 3, "epochs": 2, "validation": {"loss": 0.5, "accuracy": 0.8}},
    )


@pytest.mark.parametrize("siamese,per_category,attention", VARIANTS)
def test_score_is_symmetric_and_a_distribution(siamese, per_category, attention):
    net = make_net(siamese, per_category, attention)
    gen = torch.Generator().manual_seed(5)
    a, b = torch.randn(7, T, D, generator=gen), torch.randn(7, T, D, generator=gen)
    with torch.no_grad():
        pab, pba = net(a, b), net(b, a)
    assert pab.shape == (7, C, 3)
    torch.testing.assert_close(pab, pba, rtol=0, atol=1e-6)
    torch.testing.assert_close(pab.sum(-1), torch.ones(7, C), rtol=0, atol=1e-5)
    assert (pab >= 0).all()
    # The outputs must actually depend on the pair, or symmetry would be trivially true.
    assert (pab[0] - pab[1]).abs().max() > 1e-4


def test_training_mode_batch_norm_is_symmetric_too():
    net = make_net(dropout=0.0).train()
    gen = torch.Generator().manual_seed(6)
    a, b = torch.randn(9, T, D, generator=gen), torch.randn(9, T, D, generator=gen)
    torch.testing.assert_close(net.log_probs(a, b), net.log_probs(b, a), rtol=0, atol=1e-5)


@pytest.mark.parametrize("siamese,per_category", [(True, False), (True, True), (False, False), (False, True)])
def test_embedding_and_projection_depend_on_one_item_only(siamese, per_category):
    net = make_net(siamese, per_category)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(6, T, D, generator=gen)
    with torch.no_grad():
        alone = net.embed(x[2:3])
        together = net.embed(x)[2:3]
        torch.testing.assert_close(alone, together)
        assert together.shape == (1, T, net.embed_width)
        # Precomputed halves combined later give exactly what the full forward pass gives.
        pa, pb = net.project(net.embed(x))
        split = net.pair_log_probs((pa[:3], pb[:3]), (pa[3:], pb[3:])).exp()
        torch.testing.assert_close(split, net(x[:3], x[3:]))


def test_no_siamese_embedding_is_the_input():
    net = make_net(siamese=False)
    x = torch.randn(2, T, D)
    torch.testing.assert_close(net.embed(x), x)


def test_per_category_sub_models_are_independent():
    net = make_net(per_category=True)
    a, b = torch.randn(4, T, D), torch.randn(4, T, D)
    with torch.no_grad():
        before = net(a, b)
        # Perturb only sub-model 3's weights everywhere: only category 3 may change.
        for module in net.modules():
            if isinstance(module, M.GroupedLinear):
                module.weight[3].add_(torch.randn_like(module.weight[3]))
        after = net(a, b)
    changed = (after - before).abs().amax(dim=(0, 2))
    assert changed[3] > 1e-3
    assert torch.all(torch.cat([changed[:3], changed[4:]]) == 0)


def test_uniform_attention_is_mean_pooling():
    # Pooling is a weighted mean of per-step distributions: zero attention logits (uniform
    # weights over T) must give exactly the no-attention variant with the same weights.
    net = make_net(attention=True)
    mean_net = make_net(attention=False)
    mean_net.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("attend")})
    a, b = torch.randn(3, T, D), torch.randn(3, T, D)
    with torch.no_grad():
        weighted = net(a, b)
        net.attend.weight.zero_()
        net.attend.bias.zero_()
        uniform = net(a, b)
        torch.testing.assert_close(uniform, mean_net(a, b), rtol=0, atol=1e-6)
    # ...and trained attention weights are not uniform, so they do change the pooled output.
    assert (weighted - uniform).abs().max() > 1e-4


def test_scores_from_probs_levels_and_expected_agreement():
    probs = np.array([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.2, 0.5, 0.3]]], dtype=np.float32)
    s = M.scores_from_probs(probs)
    assert s.level.tolist() == [2]
    assert s.states.tolist() == [[0, 2, 1]]
    np.testing.assert_allclose(s.expected, [0.9 + 0.2 + 0.7], rtol=1e-6)


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    lm = loaded(make_net(per_category=True))
    path = lm.save(tmp_path / "m.safetensors")
    back = load_model(path)
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(11, T, D)).astype(np.float32), rng.normal(size=(11, T, D)).astype(np.float32)
    want, got = lm.score_pairs(a, b), back.score_pairs(a, b)
    np.testing.assert_array_equal(want.probs, got.probs)
    np.testing.assert_array_equal(want.level, got.level)
    assert back.config == lm.config
    assert back.taxonomy == Taxonomy.default()
    assert back.featurizer_identity == "logmel/1:{}"
    assert back.featurizer_spec == {"name": "logmel", "params": {}}
    np.testing.assert_array_equal(back.norm_mean, lm.norm_mean)
    np.testing.assert_array_equal(back.norm_std, lm.norm_std)
    assert back.meta["seed"] == 3 and back.meta["validation"]["accuracy"] == 0.8
    assert back.meta["versions"]["torch"] == torch.__version__
    assert back.name == "m" and not back.net.training
    # One query against many: broadcasting gives the same as repeating it.
    one = back.score_pairs(a[:1], b)
    np.testing.assert_allclose(one.probs, back.score_pairs(np.repeat(a[:1], 11, 0), b).probs, atol=1e-6)


def test_score_pairs_normalises_raw_features():
    lm = loaded(make_net())
    raw = np.random.default_rng(3).normal(size=(4, T, D)).astype(np.float32) * 5 + 2
    with torch.no_grad():
        want = lm.net(torch.from_numpy((raw[:2] - lm.norm_mean) / lm.norm_std),
                      torch.from_numpy((raw[2:] - lm.norm_mean) / lm.norm_std)).numpy()
    np.testing.assert_allclose(lm.score_pairs(raw[:2], raw[2:]).probs, want, atol=1e-6)


def test_checkpoint_is_plain_safetensors_with_json_header(tmp_path):
    path = loaded(make_net()).save(tmp_path / "m.safetensors")
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    # Every entry is a raw tensor of a plain dtype; the data region is exactly their bytes.
    sizes = {"F32": 4, "I64": 8}
    total = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        assert entry["dtype"] in sizes, entry["dtype"]
        start, end = entry["data_offsets"]
        assert end - start == sizes[entry["dtype"]] * int(np.prod(entry["shape"]))
        total += end - start
    assert len(blob) == 8 + n + total
    assert b"\x80\x04\x95" not in blob[: 8 + n] and b"torch._utils" not in blob
    meta = json.loads(header["__metadata__"]["soundsearch"])
    assert meta["config"]["tower"] == [16, 16, 16] and meta["taxonomy"][0] == "engine"
    assert "norm.mean" in header and header["norm.mean"]["shape"] == [D]


def test_featurizer_mismatch_is_refused(tmp_path):
    back = load_model(loaded(make_net()).save(tmp_path / "m.safetensors"))
    back.check_featurizer("logmel/1:{}")
    with pytest.raises(FeaturizerMismatchError, match="trained on features 'logmel/1:{}'.*'openl3/1"):
        back.check_featurizer("openl3/1:{}")


def test_bad_model_files_give_model_errors(tmp_path):
    with pytest.raises(ModelError, match="no model file"):
        load_model(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(ModelError, match="not a readable soundsearch model"):
        load_model(junk)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ModelError, match="not a soundsearch model"):
        load_model(foreign)
    good = loaded(make_net()).save(tmp_path / "good.safetensors")
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ModelError):
        load_model(truncated)


def test_unknown_architecture_field_is_refused():
    data = ModelConfig(steps=T, dim=D, n_categories=C).to_json() | {"wormholes": 3}
    with pytest.raises(ModelError, match="newer version"):
        ModelConfig.from_json(data)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    lm = loaded(make_net())
    lm.save(tmp_path / "m.safetensors")
    bad = loaded(make_net())
    bad.norm_mean = np.zeros(D + 1, np.float32)
    with pytest.raises(ModelError, match="normalisation"):
        bad.save(tmp_path / "m.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    load_model(tmp_path / "m.safetensors")


def test_resolve_and_list_models(tmp_path, monkeypatch, store_dir):
    shipped = tmp_path / "shipped"
    monkeypatch.setattr(registry.paths, "shipped_models_dirs", lambda: [shipped])
    with pytest.raises(ModelError, match="no default model is installed"):
        registry.resolve_model(None)
    loaded(make_net()).save(shipped / "default.safetensors")
    user = registry.paths.user_models_dir()
    loaded(make_net(per_category=True)).save(user / "mine.safetensors")
    (user / "broken.safetensors").write_bytes(b"garbage")
    assert registry.resolve_model(None) == shipped / "default.safetensors"
    assert registry.resolve_model("mine") == user / "mine.safetensors"
    assert registry.resolve_model(str(user / "mine.safetensors")) == user / "mine.safetensors"
    with pytest.raises(ModelError, match=r"no model named 'nope'; available: broken, default, mine"):
        registry.resolve_model("nope")
    with pytest.raises(ModelError, match="no model file at"):
        registry.resolve_model(str(tmp_path / "nope.safetensors"))
    infos = {m.name: m for m in registry.list_models()}
    assert infos["mine"].source == "user" and infos["default"].source == "shipped"
    assert infos["mine"].variant == "siamese+per-category+attention"
    assert infos["default"].val_accuracy == 0.8 and infos["default"].featurizer == "logmel"
    assert infos["broken"].error and infos["mine"].error is None
    assert infos["mine"].to_json()["n_categories"] == C


def test_the_shipped_default_model_searches_a_default_store():
    # One source: a plain `soundsearch index` makes features the default model was trained on.
    from soundsearch.features import get_featurizer
    from soundsearch.model.registry import read_header

    path = registry.resolve_model(None)
    header = read_header(path)
    assert header["featurizer"]["identity"] == get_featurizer().identity
    ranking = header["meta"]["ranking"]
    assert ranking["mode"] == "blend" and 0.0 <= ranking["weight"] <= 1.0


def test_a_saved_model_is_readable_by_others_sharing_the_folder(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = loaded(make_net()).save(tmp_path / "shared.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's private 0600
