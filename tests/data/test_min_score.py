"""min_score: images scoring below it are left out at load time, groups kept whole, every backend alike."""

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from stablerep_fast.data import available_backends, build_loader
from stablerep_fast.data.augment import MEAN, STD
from stablerep_fast.errors import DataError
from stablerep_fast.generate import GenerateConfig, generate
from stablerep_fast.generate.models import digits

K, M, N, SIZE = 4, 3, 4, 32


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Digits shards with truth scores at fidelity 0.5 (about 22% of images contradict their caption)."""
    folder = tmp_path_factory.mktemp("scored")
    (folder / "captions.txt").write_text("\n".join(digits.make_captions(40, 1)) + "\n")
    generate(GenerateConfig(captions=folder / "captions.txt", out=folder / "data", model="digits", images_per_caption=K,
                            resolution=SIZE, save_size=SIZE, image_format="png", shard_size=16, guidance=0.5,
                            scorer="truth", progress=False, device="cpu"))  # fmt: skip
    return folder / "data"


def _good_images(folder) -> dict[int, list[np.ndarray]]:
    """Reference, from the tars: caption id -> its images that score 1."""
    good = {}
    for shard in sorted(folder.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            if name.endswith(".json"):
                record, key = json.loads(data), name[: -len(".json")]
                good[record["caption_index"]] = [np.asarray(Image.open(io.BytesIO(members[f"{key}.{k}.png"])))
                                                 for k in range(K) if record["scores"][k] >= 1.0]  # fmt: skip
    return good


@pytest.mark.parametrize("backend", [b for b in ("torch", "memory") if b in available_backends()])
def test_low_scorers_are_left_out_and_groups_kept_whole(scored, backend):
    good = _good_images(scored)
    kept = {i for i, images in good.items() if len(images) >= M}
    assert 0 < len(kept) < len(good)  # the fixture drops some captions, not all
    loader = build_loader(scored, N, M, image_size=SIZE, backend=backend, device="cpu", num_workers=0, augment="none",
                          min_score=0.5)  # fmt: skip
    assert loader.skipped.low_score_captions == len(good) - len(kept)
    assert len(loader) == len(kept) // N
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    seen = set()
    for images, labels in loader:
        pixels = ((images * std + mean) * 255).round().permute(0, 2, 3, 1).numpy()
        for image, label in zip(pixels, labels.tolist()):
            assert label in kept
            seen.add(label)
            # Each view is one of the caption's images that score 1 (augment "none": exact pixels).
            assert min(np.abs(image - g).max() for g in good[label]) <= 1, label
    assert len(seen) == len(loader) * N


def test_min_score_needs_scores(shards):
    with pytest.raises(DataError, match="records no score") as raised:
        build_loader(shards, 2, 2, image_size=32, backend="torch", device="cpu", num_workers=0, min_score=0.5)
    assert len(str(raised.value).splitlines()) == 1
    with pytest.raises(ValueError, match="online generation has none"):
        build_loader(None, 2, 2, source="shapes", min_score=0.5)


def test_train_min_score_reaches_the_loader(scored, tmp_path, caplog):
    pytest.importorskip("timm")
    from stablerep_fast.cli import main

    good = _good_images(scored)
    dropped = sum(len(images) < M for images in good.values())
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--data", str(scored), "--out", str(out), "--steps", "1",
                 "--warmup-steps", "0", "--captions-per-batch", str(N), "--images-per-caption", str(M),
                 "--loader-backend", "torch", "--num-workers", "0", "--device", "cpu", "--min-score", "0.5",
                 "--no-progress"]) == 0  # fmt: skip
    saved = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert saved["config"]["min_score"] == 0.5 and dropped > 0
    assert f"and {dropped} captions left with fewer than {M} images" in caplog.text


def test_a_copy_of_a_scored_folder_is_refused_whatever_its_histogram(scored, tmp_path):
    """dataset.json's score_histogram summarises the images, it does not define them: a copy
    whose histogram differs still holds the same images."""
    import shutil

    from stablerep_fast.data import open_index

    copy = tmp_path / "copy"
    shutil.copytree(scored, copy)
    dataset = json.loads((copy / "dataset.json").read_text())
    dataset["score_histogram"]["count"] += 1
    (copy / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(DataError, match="hold the same images"):
        open_index([scored, copy])
