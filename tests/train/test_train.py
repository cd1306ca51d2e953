"""The training loop on CPU: learning, exact resume, config and checkpoint plumbing."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import ListLoader, view_major_batch
from helpers import require_stage

require_stage("generate")  # the tests write shapes shards

from stablerep_fast.generate import GenerateConfig, generate, shapes  # noqa: E402
from stablerep_fast.train import (  # noqa: E402
    CHECKPOINT, ConfigError, TrainConfig, Tokenizer, build_model, load_checkpoint, preset, resolve_config, train)
from stablerep_fast.train.optim import param_groups, warmup_cosine  # noqa: E402


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    (root / "captions.txt").write_text("\n".join(shapes.make_captions(48, seed=0)) + "\n")
    generate(GenerateConfig(captions=root / "captions.txt", out=root / "data", images_per_caption=4,
                            resolution=32, save_size=32, progress=False))  # fmt: skip
    return str(root / "data")


def test_a_few_steps_on_generated_shards_decrease_the_loss(shards, micro_config):
    config = replace(micro_config, data=shards, augment="none", num_workers=0, captions_per_batch=8, images_per_caption=4,
                     steps=16, warmup_steps=2, base_lr=4e-3, image_size=16)  # fmt: skip
    summary = train(config)
    first, last = sum(summary.losses[:3]) / 3, sum(summary.losses[-3:]) / 3
    assert last < first - 0.1, f"loss went from {first:.3f} to {last:.3f}: {summary.losses}"
    log = [json.loads(line) for line in (Path(config.out) / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 17)) and all(r["images_per_s"] > 0 for r in log)
    assert TrainConfig.load(Path(config.out) / "config.yaml") == config


def test_resume_equals_an_uninterrupted_run(shards, micro_config, tmp_path):
    config = replace(micro_config, data=shards, num_workers=0, captions_per_batch=8, steps=6, checkpoint_every=2)
    whole = train(replace(config, out=str(tmp_path / "whole")))
    interrupted = replace(config, out=str(tmp_path / "parts"), stop_at=3)
    first = train(interrupted)
    assert first.step == 3 and load_checkpoint(Path(first.out) / CHECKPOINT)["loader"] == {"step": 3}
    second = train(replace(interrupted, stop_at=None, resume=True))
    assert second.step == 6 and len(second.losses) == 3
    assert second.losses == whole.losses[3:]
    a = load_checkpoint(Path(whole.out) / CHECKPOINT)
    b = load_checkpoint(Path(second.out) / CHECKPOINT)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), f"{name} differs after resume"
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    assert a["scheduler"] == b["scheduler"] and a["loader"] == b["loader"] == {"step": 6}


def test_text_tower_trains_with_the_image_text_loss(micro_config):
    config = replace(micro_config, text=True, steps=4)
    captions = {i: f"a small red {['star', 'ring', 'cross', 'square'][i]} on a grey background" for i in range(4)}
    summary = train(config, ListLoader([view_major_batch(4, 2, 16)], captions))
    assert all(torch.isfinite(torch.tensor(summary.losses)))
    log = [json.loads(line) for line in (Path(config.out) / "log.jsonl").read_text().splitlines()]
    assert {"image_loss", "img_txt_loss", "logit_scale"} <= log[-1].keys()
    assert abs(log[-1]["loss"] - log[-1]["image_loss"] - log[-1]["img_txt_loss"]) < 1e-4


def test_logit_scale_is_clamped_at_100(micro_config):
    model = build_model(replace(micro_config, text=True))
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    tokens = Tokenizer(16)(["a red star"] * 2)
    assert tokens.shape == (2, 16) and tokens.dtype == torch.int64
    out = model(torch.randn(4, 3, 16, 16), 2, tokens)
    assert out["logit_scale"].item() == pytest.approx(100.0)
    assert out["feats"].shape == (4, 16)
    assert out["image_emb"].shape == (4, 16) and out["text_emb"].shape == (2, 16)


def test_head_batch_norm_is_per_view(micro_config):
    head = build_model(micro_config).head.train()
    x = torch.randn(8, 32)
    x[4:] += 100.0  # the second view's chunk: normalised on its own statistics
    together = head(x, views=2)
    assert torch.allclose(together[4:], head(x[4:], views=1), atol=1e-5)


def test_weight_decay_skips_biases_norms_and_scalars(micro_config):
    model = build_model(replace(micro_config, text=True))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert any(p is model.logit_scale for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_schedule_and_lr_scaling():
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1) and warmup_cosine(9, 10, 100) == 1.0
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.5) and warmup_cosine(100, 10, 100) == pytest.approx(0.0)
    recipe = preset("vit_b16")
    assert recipe.lr == pytest.approx(2e-4 * 1344 * 6 / 256) and recipe.betas == (0.9, 0.98)


def test_config_yaml_round_trip_and_errors(tmp_path):
    config = preset("tiny", text=True, data=["a", "b"])
    config.save(tmp_path / "c.yaml")
    assert TrainConfig.load(tmp_path / "c.yaml") == config
    (tmp_path / "bad.yaml").write_text("stepz: 3\n")
    with pytest.raises(ConfigError, match="stepz"):
        TrainConfig.load(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="divide over 3 ranks"):
        preset("tiny", captions_per_batch=8).validate(world_size=3)


def test_checkpoint_is_written_atomically(micro_config):
    summary = train(replace(micro_config, steps=2), ListLoader([view_major_batch(4, 2, 16)]))
    files = sorted(p.name for p in Path(summary.out).iterdir())
    assert files == ["checkpoint.pt", "config.yaml", "log.jsonl", "train.lock"]  # no temporary file left behind
    state = load_checkpoint(summary.checkpoint)
    assert {"model", "optimizer", "scheduler", "loader", "rng", "step", "config"} <= state.keys()


def test_resolve_config_layers_preset_file_sets_then_settings(tmp_path):
    (tmp_path / "run.yaml").write_text("steps: 7\nseed: 1\nimage_size: 48\n")
    config = resolve_config("tiny", tmp_path / "run.yaml", ["seed=2", "model_kwargs={depth: 2}"], seed=3, image_size=None)
    tiny = preset("tiny")
    assert (config.steps, config.seed, config.image_size) == (7, 3, 48)  # file < sets < settings; None keeps
    assert config.model_kwargs == {"depth": 2} and config.head_dim == tiny.head_dim
    (tmp_path / "list.yaml").write_text("- 1\n")
    for bad, match in ((dict(config_file=tmp_path / "none.yaml"), "no such file"), (dict(config_file=tmp_path / "list.yaml"), "mapping"),
                       (dict(sets=["steps"]), "FIELD=VALUE"), (dict(sets=["stepz=1"]), "stepz")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            resolve_config("tiny", **bad)

def test_summary_for_people_is_one_line(tmp_path):
    from stablerep_fast.train import TrainSummary

    summary = TrainSummary(out=tmp_path, step=12, images=96, seconds=4.0, losses=[5.0, 4.25], checkpoint=tmp_path / "c.pt")
    assert summary.format() == f"step 12: 96 images in 4.0 s (24.0 images/s); last loss 4.2500 -> {tmp_path / 'c.pt'}"
    assert "last loss nan" in replace(summary, losses=[]).format()
