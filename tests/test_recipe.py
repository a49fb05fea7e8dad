"""Recipe levers beyond the paper (the default model's training): item batches with balanced
in-batch pairs, auxiliary tagging loss, scene mixing, state weights, cosine schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from soundsearch.model.checkpoint import load_model
from soundsearch.training.fit import fit
from soundsearch.training.trainer import _batch_pairs
from soundsearch.training.config import TrainConfig
from tests.test_train import SMALL, TAX, separable

RECIPE = dict(batching="items", batch_items=32, batch_size=256, tag_weight=1.0, mix_prob=0.3,
              state_weights=(2.0, 1.0, 1.0), lr_schedule="cosine", optimizer="adamw",
              weight_decay=1e-2, input_noise=0.2, context="stats", pairs_per_side=3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(feats, labels, **kw):
    return fit(feats, labels, TAX, {"name": "synthetic", "params": {}}, "synthetic/1:{}",
               TrainConfig(**(SMALL | RECIPE | kw)))


def test_paper_defaults_are_unchanged():
    cfg = TrainConfig()
    assert (cfg.batching, cfg.tag_weight, cfg.mix_prob, cfg.state_weights, cfg.lr_schedule) == (
        "random", 0.0, 0.0, (1.0, 1.0, 1.0), "constant")


def test_item_batching_recipe_learns_and_is_seeded(tmp_path):
    feats, labels = separable(160)
    res = run(feats, labels, epochs=30, refit=False)
    v = res.report.validation
    assert v.accuracy > v.majority + 0.15, (v.accuracy, v.majority)
    select = [h for h in res.report.history if h.phase == "select"]
    assert select[-1].train_loss < select[0].train_loss
    # pairs per epoch = batches x batch_size, reported as such
    train_items = len(feats) - v.recordings  # one recording per item here
    per_epoch = (train_items // RECIPE["batch_items"]) * RECIPE["batch_size"]
    for h in select:
        assert h.pairs_per_s * h.seconds == pytest.approx(per_epoch, rel=1e-6)
    assert res.report.pairs_per_s > 0
    again = run(feats, labels, epochs=30, refit=False)
    for k, v1 in res.model.net.state_dict().items():
        assert torch.equal(v1, again.model.net.state_dict()[k]), k
    # The recipe travels in the checkpoint, and the auxiliary tagger is not part of the model.
    path = res.model.save(tmp_path / "m.safetensors")
    loaded = load_model(path)
    recipe = loaded.meta["recipe"]
    assert recipe["batching"] == "items" and recipe["tag_weight"] == 1.0 and recipe["mix_prob"] == 0.3
    assert recipe["state_weights"] == [2.0, 1.0, 1.0] and recipe["lr_schedule"] == "cosine"
    assert set(loaded.net.state_dict()) == set(res.model.net.state_dict())


def test_each_lever_changes_training():
    feats, labels = separable(96)
    base = run(feats, labels, epochs=2, refit=False, tag_weight=0.0, mix_prob=0.0,
               state_weights=(1.0, 1.0, 1.0), lr_schedule="constant")
    w0 = base.model.net.state_dict()
    for change in ({"tag_weight": 1.0}, {"mix_prob": 0.5}, {"state_weights": (3.0, 1.0, 1.0)},
                   {"lr_schedule": "cosine"}):
        other = run(feats, labels, epochs=2, refit=False, **({"tag_weight": 0.0, "mix_prob": 0.0,
                    "state_weights": (1.0, 1.0, 1.0), "lr_schedule": "constant"} | change))
        w1 = other.model.net.state_dict()
        assert any(not torch.equal(w0[k], w1[k]) for k in w0), change


def test_pair_loop_batching_accepts_the_levers_too():
    feats, labels = separable(80)
    res = run(feats, labels, batching="random", batch_size=64, epochs=2, refit=False)
    assert np.isfinite(res.report.validation.loss)


def test_batch_pairs_are_balanced_and_never_self():
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    # a rare category (10%) and a common one (60%)
    labels = torch.from_numpy(np.stack([rng.random(200) < 0.1, rng.random(200) < 0.6], 1))
    first, second = _batch_pairs(labels, 20000, gen)
    assert not (first == second).any()
    for c in range(2):
        same = (labels[first, c] == labels[second, c]).float().mean().item()
        # every pair is drawn for one random category with 50/50 same/opposite; for the other
        # category the situation is left to chance, so the overall share sits between.
        assert 0.3 < same < 0.9
    # For the rare category, pairs drawn "opposite" pull many more positives than chance.
    differs = (labels[first, 0] != labels[second, 0]).float().mean().item()
    chance = 2 * 0.1 * 0.9
    assert differs > chance + 0.05


@pytest.mark.parametrize("bad", [
    {"batch_items": 1}, {"tag_weight": -1.0}, {"mix_prob": 1.5}, {"state_weights": (1.0, 1.0)},
    {"state_weights": (0.0, 1.0, 1.0)}, {"lr_schedule": "linear"}, {"batching": "pairs"},
])
def test_bad_recipe_values_are_refused(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_cli_flags_reach_the_checkpoint(tmp_path, store_dir):
    from typer.testing import CliRunner

    from soundsearch.cli import app
    from tests.conftest import noise_bursts, tone, write_audio

    rows = ["path,horn,bark,drill,split"]
    for i in range(12):
        lab = (i % 2, (i // 2) % 2, int(i % 3 == 0))
        sig = tone(300 + 200 * lab[0] + 37 * i, 0.6) + noise_bursts(0.6, seed=i, amp=0.1 * (1 + lab[1]))
        write_audio(tmp_path / f"a{i}.wav", sig)
        rows.append(f"a{i}.wav,{lab[0]},{lab[1]},{lab[2]},{'test' if i >= 10 else 'train'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "m.safetensors"
    res = CliRunner().invoke(app, [
        "train", "--dataset", str(tmp_path / "labels.csv"), "--out", str(out), "--epochs", "2",
        "--no-refit", "--batching", "items", "--batch-items", "4", "--batch-size", "16",
        "--tag-weight", "0.5", "--mix", "0.2", "--state-weights", "2,1,1", "--lr-schedule", "cosine",
        "--tower", "8", "--head", "8,8", "--pairs-per-side", "2", "--jobs", "1", "--quiet",
    ])
    assert res.exit_code == 0, res.output
    recipe = load_model(out).meta["recipe"]
    assert (recipe["batching"], recipe["batch_items"], recipe["tag_weight"], recipe["mix_prob"]) == ("items", 4, 0.5, 0.2)
    assert recipe["state_weights"] == [2.0, 1.0, 1.0] and recipe["lr_schedule"] == "cosine"
    bad = CliRunner().invoke(app, ["train", "--dataset", str(tmp_path / "labels.csv"), "--state-weights", "2,1"])
    assert bad.exit_code == 2 and "state-weights" in bad.output


def test_category_balance_gives_rare_categories_both_pairs():
    rng = np.random.default_rng(1)
    labels = torch.from_numpy(np.stack([rng.random(256) < 0.08, rng.random(256) < 0.6], 1))

    def both_share(balance):
        first, second = _batch_pairs(labels, 20000, torch.Generator().manual_seed(0), balance)
        assert not (first == second).any()
        return (labels[first, 0] & labels[second, 0]).float().mean().item()

    partner, category = both_share("partner"), both_share("category")
    # Drawn for the rare category (half the pairs), the first item holds it half the time and
    # the partner matches it half of that: about 1/8 of all pairs are "both" for it.
    assert 0.09 < category < 0.16
    assert category > 2 * partner
    with pytest.raises(ValueError):
        TrainConfig(pair_balance="random")
