"""Training on synthetic separable features: it learns, it is seeded, it refuses bad data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from soundsearch.errors import DatasetError
from soundsearch.model.checkpoint import load_model
from soundsearch.taxonomy import Taxonomy
from soundsearch.training.fit import fit, split_holdout
from soundsearch.training.trainer import evaluate_pairs
from soundsearch.training.config import TrainConfig

T, D = 4, 8
TAX = Taxonomy(("horn", "bark", "drill"))
# Narrow layers keep the tests fast; dropout 0.5 on 16 units would drown the signal.
SMALL = dict(tower=(16, 16, 16), head=(32, 16), dropout=0.1, lr=3e-3, threads=1, batch_size=64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def separable(n: int = 120, seed: int = 0, noise: float = 0.6):
    """Each category adds its own pattern to the frames; labels are random, ~40% present."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(TAX))) < 0.4).astype(np.uint8)
    patterns = np.random.default_rng(99).normal(size=(len(TAX), D)) * 2  # same for every draw
    feats = rng.normal(scale=noise, size=(n, T, D)) + (labels @ patterns)[:, None, :]
    return (feats * 3 + 10).astype(np.float32), labels  # raw scale/offset: normalisation must cope


def run(feats, labels, **kw):
    return fit(feats, labels, TAX, {"name": "synthetic", "params": {}}, "synthetic/1:{}",
               TrainConfig(**(SMALL | kw)))


def test_learns_separable_presence_states():
    feats, labels = separable()
    res = run(feats, labels, max_epochs=6, patience=2)
    v = res.report.validation
    assert v.accuracy > v.majority + 0.2, (v.accuracy, v.majority)
    assert v.accuracy > 0.85
    # Chosen by validation loss, then refit on everything for that many epochs.
    select = [h for h in res.report.history if h.phase == "select"]
    refit = [h for h in res.report.history if h.phase == "refit"]
    best = min(select, key=lambda h: h.val_loss)
    assert res.report.epochs == best.epoch == len(refit)
    assert abs(v.loss - best.val_loss) < 1e-9
    assert select[-1].train_loss < select[0].train_loss
    # The refit model scores unseen data from the same source well too.
    test_feats, test_labels = separable(60, seed=1)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 60, 500), rng.integers(0, 60, 500)
    s = res.model.score_pairs(test_feats[a], test_feats[b])
    true_level = (test_labels[a] == test_labels[b]).sum(1)
    assert (s.level == true_level).mean() > 0.6


def test_deterministic_with_seed():
    feats, labels = separable(80)
    r1 = run(feats, labels, epochs=2, seed=3)
    r2 = run(feats, labels, epochs=2, seed=3)
    r3 = run(feats, labels, epochs=2, seed=4)
    s1, s2, s3 = (r.model.net.state_dict() for r in (r1, r2, r3))
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)
    assert [h.train_loss for h in r1.report.history] == [h.train_loss for h in r2.report.history]


def test_fixed_epochs_no_refit_keeps_selected_weights():
    feats, labels = separable(80)
    seen = []
    res = fit(feats, labels, TAX, {"name": "synthetic", "params": {}}, "synthetic/1:{}",
              TrainConfig(**(SMALL | dict(epochs=2, refit=False))), on_epoch=seen.append)
    assert [(h.phase, h.epoch) for h in seen] == [("select", 1), ("select", 2)]
    assert res.report.epochs == 2 and not res.report.refit
    # The kept weights are exactly those whose held-out loss the report gives.
    held = split_holdout(labels, np.arange(80), 0.1, 0)
    x = torch.from_numpy(res.model.normalise(feats[held]))
    from soundsearch.training.pairs import make_pairs

    pairs = make_pairs(labels[held], 30, seed=1, scheme="shared")
    loss, per_cat, _ = evaluate_pairs(res.model.net, x, torch.from_numpy(labels[held].astype(bool)), pairs)
    assert abs(loss - res.report.validation.loss) < 1e-5


def test_checkpoint_records_the_run(tmp_path):
    feats, labels = separable(80)
    res = run(feats, labels, epochs=1, per_category=True, input_noise=0.1, optimizer="adamw", weight_decay=0.01)
    path = res.model.save(tmp_path / "m.safetensors")
    back = load_model(path)
    assert back.config.per_category and back.taxonomy == TAX
    assert back.meta["recipe"]["optimizer"] == "adamw" and back.meta["recipe"]["input_noise"] == 0.1
    assert back.meta["epochs"] == 1 and back.meta["seed"] == 0
    assert back.meta["data"]["items"] == 80 and back.meta["data"]["pairs"]["pairs"] > 0
    assert 0 <= back.meta["validation"]["accuracy"] <= 1
    np.testing.assert_array_equal(back.norm_mean, res.model.norm_mean)
    np.testing.assert_allclose(back.score_pairs(feats[:5], feats[5:10]).probs,
                               res.model.score_pairs(feats[:5], feats[5:10]).probs, atol=1e-6)


def test_holdout_keeps_recordings_whole_and_categories_in_training():
    feats, labels = separable(100)
    groups = np.repeat(np.arange(50), 2)  # two items per recording
    labels = labels.copy()
    labels[1::2] = labels[0::2]
    held = split_holdout(labels, groups, 0.1, seed=0)
    assert held.sum() == 10  # 5 recordings of 2 items
    for g in range(50):
        assert held[2 * g] == held[2 * g + 1]
    assert (labels[~held].sum(0) >= 2).all() and ((1 - labels[~held]).sum(0) >= 2).all()


def test_rare_category_is_never_held_out_entirely():
    feats, labels = separable(60)
    labels[:, 1] = 0
    labels[[3, 7], 1] = 1  # only two recordings with "bark": both must stay in training
    for seed in range(5):
        held = split_holdout(labels, np.arange(60), 0.3, seed)
        assert not held[[3, 7]].any()


def test_bad_training_data_is_refused():
    feats, labels = separable(40)
    with pytest.raises(DatasetError, match=r"not so for: bark \(1 with, 39 without\)"):
        lab = labels.copy()
        lab[:, 1] = 0
        lab[0, 1] = 1
        run(feats, lab)
    with pytest.raises(DatasetError, match="NaN"):
        bad = feats.copy()
        bad[0, 0, 0] = np.nan
        run(bad, labels)
    with pytest.raises(DatasetError, match="categories"):
        run(feats, labels[:, :2])
    with pytest.raises(DatasetError, match="0/1"):
        run(feats, labels * 2)
    with pytest.raises(DatasetError, match="items"):
        run(feats, labels[:10])


def test_external_validation_split_picks_epochs_and_keeps_weights():
    feats, labels = separable(80)
    vfeats, vlabels = separable(30, seed=7)
    res = fit(feats, labels, TAX, {"name": "synthetic", "params": {}}, "synthetic/1:{}",
              TrainConfig(**(SMALL | dict(max_epochs=3, patience=1))), val_feats=vfeats, val_labels=vlabels)
    assert not res.report.refit and all(h.phase == "select" for h in res.report.history)
    assert res.report.validation.recordings == 30
    assert res.model.meta["validation"]["source"] == "validation split"
    # All 80 training recordings were trained on (none held out), with their statistics.
    np.testing.assert_allclose(res.model.norm_mean, feats.reshape(-1, D).mean(0), rtol=1e-4, atol=1e-4)
    with pytest.raises(DatasetError, match="shape"):
        fit(feats, labels, TAX, {}, "x", TrainConfig(**SMALL), val_feats=vfeats[:, :2], val_labels=vlabels)


def test_blocked_batches_cover_every_pair_once_with_fewer_items():
    from soundsearch.training.pairs import make_pairs
    from soundsearch.training.trainer import Trainer

    _, labels = separable(400)
    pairs = make_pairs(labels, seed=0)
    cfg = TrainConfig(**(SMALL | dict(batching="blocked", batch_size=64)))
    net = TrainConfig(**SMALL).model_config(T, D, len(TAX))
    from soundsearch.model.network import PresenceNet

    trainer = Trainer(PresenceNet(net), torch.zeros(400, T, D), torch.from_numpy(labels.astype(bool)),
                       pairs, cfg, torch.Generator().manual_seed(0))
    order, bounds = trainer._blocked_order()
    assert sorted(order.tolist()) == list(range(len(pairs)))  # a permutation: each pair once
    assert bounds[0] == 0 and bounds[-1] == len(pairs) and all(b > a for a, b in zip(bounds, bounds[1:]))
    sizes = np.diff(bounds)
    assert sizes.max() <= 96 and np.median(sizes) >= 32
    p = trainer.pairs[order]
    distinct = [len(torch.unique(p[a:b])) / (b - a) for a, b in zip(bounds, bounds[1:])]
    assert np.mean(distinct) < 0.8  # random batches touch ~2 items per pair
    assert not torch.equal(order, trainer._blocked_order()[0])  # new blocks every epoch


def test_configuration_and_divergence_errors_are_typed():
    # Configuration errors are the project's (one CLI line) and still ValueErrors.
    from soundsearch.model.config import ModelConfig
    from soundsearch.errors import ConfigError, SoundsearchError, TrainingError

    for bad in (dict(optimizer="lbfgs"), dict(context="nope"), dict(dropout=1.0), dict(tower=(0,))):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)
    with pytest.raises(ConfigError):
        ModelConfig(steps=0, dim=1, n_categories=1)
    assert issubclass(ConfigError, ValueError) and issubclass(TrainingError, SoundsearchError)
    # A diverged run is a training error, not a dataset error.
    feats, labels = separable(60)
    with pytest.raises(TrainingError, match="diverged"):
        fit(feats, labels, TAX, {"name": "synthetic", "params": {}}, "synthetic/1:{}",
            TrainConfig(**(SMALL | dict(lr=1e30, epochs=1, refit=False))))
