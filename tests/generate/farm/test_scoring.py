"""Consistency scores (generate --score), the score histogram, and redrawing low scorers."""

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stablerep_fast.cli import main
from stablerep_fast.errors import GenerateError
from stablerep_fast.generate import GenerateConfig, farm_status, generate, initial_noise, noise_seed
from stablerep_fast.generate.models import digits
from stablerep_fast.generate.models.scorers import DigitsTruth, ShapesTruth, load_scorer
from stablerep_fast.testing import random_clip_folder

K = 4


def _write_captions(path: Path, n: int, seed: int = 0) -> Path:
    path.write_text("\n".join(digits.make_captions(n, seed)) + "\n")
    return path


def _config(tmp_path: Path, out: str, **options) -> GenerateConfig:
    settings = dict(captions=_write_captions(tmp_path / "captions.txt", 10), out=tmp_path / out, model="digits",
                    images_per_caption=K, resolution=32, save_size=32, image_format="png", shard_size=4, batch_size=3,
                    guidance=0.3, scorer="truth", progress=False, device="cpu")  # fmt: skip
    return GenerateConfig(**{**settings, **options})


def _samples(out: Path) -> dict[int, tuple[dict, list[np.ndarray]]]:
    """caption id -> (its KEY.json, its images), read straight from the tars."""
    samples = {}
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            if name.endswith(".json"):
                record = json.loads(data)
                key = name[: -len(".json")]
                images = [np.asarray(Image.open(io.BytesIO(members[f"{key}.{k}.png"]))) for k in range(K)]
                samples[record["caption_index"]] = (record, images)
    return samples


def test_digits_truth_matches_the_documented_contradiction_rate():
    # The digits world contradicts a caption's digit with probability 9e / (1 + 9e), e = 1e-3 ** fidelity.
    rng = np.random.default_rng(0)
    n = 4000
    latents = torch.from_numpy(rng.standard_normal((n, digits.LATENT_DIM)).astype(np.float32))
    captions = ["the digit seven"] * n
    for fidelity in (0.0, 0.5):
        e = digits.CONTRADICTION**fidelity
        expected = 1 - 9 * e / (1 + 9 * e)
        mean = DigitsTruth()(captions, np.zeros((n, 1, 1, 3), np.uint8), latents=latents, guidance=fidelity).mean()
        sd = math.sqrt(expected * (1 - expected) / n)
        assert abs(mean - expected) < 5 * sd, (fidelity, mean, expected)
    # A caption naming no digit has nothing to contradict; the shapes world keeps a named shape.
    assert DigitsTruth()(["a digit"], np.zeros((1, 1, 1, 3), np.uint8), latents=latents[:1], guidance=0.0).tolist() == [1.0]
    shape_latents = torch.randn(50, 14)
    assert ShapesTruth()(["a red star"] * 50, np.zeros((50, 1, 1, 3), np.uint8), latents=shape_latents, guidance=None).min() == 1.0


def test_scores_are_recorded_per_image_and_summed_in_dataset_json(tmp_path):
    config = _config(tmp_path, "scored")
    summary = generate(config)
    samples = _samples(config.out)
    texts = config.captions.read_text().splitlines()
    recorded = []
    for i, (record, _) in sorted(samples.items()):
        noise = initial_noise(config.seed, [i], K, (digits.LATENT_DIM,))[0]
        drawn = [digits.draw_parameters(digits.parse_caption(texts[i]), z.numpy(), 0.3).digit for z in noise]
        assert record["scores"] == [float(d == digits.parse_caption(texts[i])["digit"]) for d in drawn]
        recorded += record["scores"]
    dataset = json.loads((config.out / "dataset.json").read_text())
    histogram = dataset["score_histogram"]
    assert histogram["count"] == len(recorded) == 10 * K
    assert histogram["mean"] == pytest.approx(np.mean(recorded))
    assert histogram["bins"][0] == recorded.count(0.0) and histogram["bins"][-1] == recorded.count(1.0)
    assert 0 < histogram["bins"][0] < len(recorded)  # fidelity 0.3 contradicts some captions, not all
    assert summary.scores == histogram and "scores: mean" in summary.format(config.captions)
    assert dataset["score"] == "digits"
    # farm-status sums the done markers' histograms while the farm runs: the same numbers.
    live = farm_status(config.out).scores
    assert {key: live[key] for key in ("count", "bins", "min", "max")} == {key: histogram[key] for key in ("count", "bins", "min", "max")}
    assert live["mean"] == pytest.approx(histogram["mean"])
    # Resuming: the identity check passes (the histogram is no setting), nothing is redone and the
    # histogram, rewritten from the same done markers, is the same.
    before = (config.out / "dataset.json").read_bytes()
    again = generate(config)
    assert again.shards_written == 0 and (config.out / "dataset.json").read_bytes() == before
    # Another scorer is another dataset.
    with pytest.raises(GenerateError, match="score"):
        generate(_config(tmp_path, "scored", scorer="tests_scorer_plugin:HalfScorer"))


def test_redrawn_images_come_from_the_documented_seeds_and_resume_bytewise(tmp_path):
    config = _config(tmp_path, "redrawn", regenerate_below=0.5, max_regenerations=3)
    summary = generate(config)
    plain = _samples(generate(_config(tmp_path, "plain")).out)
    samples = _samples(config.out)
    texts = config.captions.read_text().splitlines()
    redrawn = 0
    for i, (record, images) in samples.items():
        for k, attempt in enumerate(record["attempts"]):
            index = k + attempt * K
            assert record["seeds"][k] == noise_seed(config.seed, i, index)
            noise = torch.Generator().manual_seed(noise_seed(config.seed, i, index))
            latent = torch.randn((digits.LATENT_DIM,), generator=noise)
            expected = digits.DigitsPipeline()([texts[i]], latent.view(1, 1, -1), resolution=32, output_size=32,
                                               guidance_scale=0.3).images[0, 0]  # fmt: skip
            np.testing.assert_array_equal(images[k], expected, err_msg=f"caption {i} image {k} attempt {attempt}")
            first = plain[i][0]["scores"][k]
            if first >= 0.5:
                assert attempt == 0 and record["scores"][k] == first  # only low scorers are redrawn
            elif attempt == 0:
                assert record["scores"][k] == first  # no attempt did better: the first draw is kept
            else:
                redrawn += 1
                assert record["scores"][k] == 1.0  # a truth score: the first attempt that reaches 0.5 is kept
    assert redrawn == summary.regenerated > 0
    assert sum(r["scores"].count(0.0) for r, _ in samples.values()) < sum(r["scores"].count(0.0) for r, _ in plain.values())
    # Killed and resumed (one shard's files gone): the same bytes.
    tars = {p.name: p.read_bytes() for p in config.out.glob("shard-*.tar")}
    for path in config.out.glob("shard-000001.*"):
        path.unlink()
    generate(config)
    assert {p.name: p.read_bytes() for p in config.out.glob("shard-*.tar")} == tars


def test_plugin_scorer_and_one_line_errors(tmp_path, monkeypatch, capsys):
    plugin = tmp_path / "tests_scorer_plugin.py"
    plugin.write_text("import numpy as np\nclass HalfScorer:\n    def __call__(self, captions, images):\n"
                      "        return np.full(len(captions), 0.5)\n")  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path))
    summary = generate(_config(tmp_path, "plugin", scorer="tests_scorer_plugin:HalfScorer"))
    assert summary.scores["mean"] == 0.5 and summary.scores["bins"][10] == 10 * K
    assert json.loads((tmp_path / "plugin" / "dataset.json").read_text())["score"] == "tests_scorer_plugin:HalfScorer"
    # An object works too; a broken scorer is one line naming it.
    with pytest.raises(GenerateError, match="returned scores of shape"):
        generate(_config(tmp_path, "bad", scorer=lambda captions, images: [1.0]))
    with pytest.raises(GenerateError, match="needs a scorer"):
        generate(_config(tmp_path, "x", scorer=None, regenerate_below=0.5))
    with pytest.raises(GenerateError, match="no truth scorer"):
        load_scorer("truth", model_id="my-model")
    captions = str(tmp_path / "captions.txt")
    for score, message in (("clip", "needs local weights"), (f"clip:{tmp_path}", "open_clip_config.json"),
                           ("nonsense", "not a scorer")):  # fmt: skip
        assert main(["generate", "--captions", captions, "--out", str(tmp_path / "cli"), "--model", "digits",
                     "--score", score, "--no-progress"]) == 2  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_clip_scores_are_cosine_similarities_of_a_local_model(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    model_cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
                 "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}  # fmt: skip
    torch.manual_seed(0)
    folder = random_clip_folder(tmp_path / "tiny-clip", model_cfg)
    model = open_clip.model.CLIP(**model_cfg).eval()
    model.load_state_dict(torch.load(folder / "open_clip_pytorch_model.bin"))
    scorer = load_scorer(f"clip:{folder}", model_id="digits")
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    captions = ["the digit one", "the digit two", "a digit"]
    scores = scorer(captions, images)
    # Reference: the model's own forward, in float64, on the same normalised pixels and tokens.
    mean, std = torch.tensor(open_clip.OPENAI_DATASET_MEAN), torch.tensor(open_clip.OPENAI_DATASET_STD)
    pixels = (torch.from_numpy(images).permute(0, 3, 1, 2).double() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    with torch.no_grad():
        image, text, _ = model.double()(pixels, open_clip.tokenize(captions, context_length=16))
    np.testing.assert_allclose(scores, (image * text).sum(-1).numpy(), atol=1e-4)  # float32 scorer vs float64
