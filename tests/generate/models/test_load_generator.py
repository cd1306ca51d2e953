"""Generators as plugins: the protocol, a user's class from Python and by import path, and
one-line errors for anything that is not a generator."""

import io
import json
import tarfile
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from plugin_generator import Blobs, expected_image

from stablerep_fast.cli import main
from stablerep_fast.generate import GenerateConfig, GenerateError, Generator, generate, initial_noise, load_generator, shapes
from stablerep_fast.shards import read_dataset

SMALL = dict(images_per_caption=3, resolution=24, save_size=24, shard_size=4, image_format="png", progress=False)
CPU = dict(device=torch.device("cpu"), dtype=torch.float32)


def _samples(out):
    """{key: (metadata, [images])} of every shard in ``out``."""
    samples = {}
    for path in sorted(out.glob("shard-*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                meta, images = samples.setdefault(key, ({}, {}))
                data = tar.extractfile(member).read()
                if ext == "json":
                    meta.update(json.loads(data))
                elif ext.endswith(".png"):
                    images[int(ext.split(".")[0])] = np.asarray(Image.open(io.BytesIO(data)))
    return {key: (meta, [images[k] for k in sorted(images)]) for key, (meta, images) in samples.items()}


def test_built_in_generators_satisfy_the_protocol(tiny_sd):
    assert isinstance(shapes.ShapesPipeline(), Generator) and isinstance(tiny_sd, Generator)
    assert isinstance(Blobs(), Generator) and not isinstance(object(), Generator)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    assert isinstance(tiny_sd.unet, UNet2DConditionModel) and isinstance(tiny_sd.vae, AutoencoderKL)
    assert isinstance(tiny_sd.text_encoder, CLIPTextModel)
    with pytest.raises(GenerateError, match="multiple of 4"):
        tiny_sd.latent_shape(30)  # the SD pipeline checks the resolution where the latent is shaped


def test_a_generator_object_from_python(captions_file, tmp_path):
    captions = captions_file(10)
    texts = captions.read_text().splitlines()
    config = GenerateConfig(captions=captions, out=tmp_path / "one", model=Blobs(), seed=3, **SMALL)
    summary = generate(config)
    assert (summary.model, summary.backend, summary.images) == ("blobs-v1", "custom", 30)
    assert read_dataset(tmp_path / "one")["model"] == "blobs-v1"
    samples = _samples(tmp_path / "one")
    assert sorted(samples) == [f"{i:09d}" for i in range(10)]
    for key, (meta, images) in samples.items():
        i = int(key)
        noise = initial_noise(3, [i], 3, (3,))[0]  # this caption's K latents, from (seed, caption, k)
        assert meta["caption"] == texts[i] and meta["model"] == "blobs-v1" and meta["backend"] == "custom"
        for k, image in enumerate(images):
            np.testing.assert_array_equal(image, expected_image(texts[i], noise[k].numpy(), 24), err_msg=f"{key}.{k}")

    # Resume skips done shards; a farm of two ranks writes the same bytes as one process.
    assert generate(config).shards_skipped == 3
    for rank in (0, 1):
        generate(GenerateConfig(captions=captions, out=tmp_path / "farm", model=Blobs(), seed=3, world_size=2, rank=rank, **SMALL))
    for name in ("shard-000000.tar", "shard-000001.tar", "shard-000002.tar", "shard-000001.idx", "dataset.json"):
        assert (tmp_path / "farm" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name

    # Latent-neighbour views: the K latents given to the generator are neighbours of one anchor.
    generate(GenerateConfig(captions=captions, out=tmp_path / "nb", model=Blobs(), seed=3, views="latent-neighbors",
                            latent_std=0.1, **SMALL))  # fmt: skip
    meta, images = _samples(tmp_path / "nb")["000000002"]
    noise = initial_noise(3, [2], 3, (3,), views="latent-neighbors", latent_std=0.1)[0]
    assert "anchor_seed" in meta
    np.testing.assert_array_equal(images[1], expected_image(texts[2], noise[1].numpy(), 24))


def test_the_cli_takes_an_import_path(captions_file, tmp_path, monkeypatch, capsys):
    (tmp_path / "plugins_cli_ok.py").write_text("from plugin_generator import Blobs as Mine\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["generate", "--captions", str(captions_file(6)), "--out", str(tmp_path / "out"), "--model", "plugins_cli_ok:Mine",
            "--images-per-caption", "2", "--resolution", "16", "--save-size", "16", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert "12 images of 6 captions" in capsys.readouterr().out
    assert read_dataset(tmp_path / "out")["model"] == "blobs-v1"


BAD_PLUGINS = {
    "no_such_module_xyz:Gen": (None, "cannot import no_such_module_xyz (ModuleNotFoundError"),
    "plugins_bad_syntax:Gen": ("def broken(:\n", "cannot import plugins_bad_syntax (SyntaxError"),
    "plugins_bad_attr:Missing": ("class Gen:\n    pass\n", "plugins_bad_attr has no attribute 'Missing'"),
    "plugins_bad_args:Gen": ("class Gen:\n    def __init__(self, weights):\n        pass\n",
                             "Gen() failed (TypeError: "),
    "plugins_bad_protocol:Gen": ("class Gen:\n    model_id = 'g'\n", "not a generator: Gen lacks latent_shape, __call__"),
    "plugins_bad_id:Gen": ("class Gen:\n    model_id = None\n    def latent_shape(self, r):\n        return (2,)\n"
                           "    def __call__(self, *a, **k):\n        pass\n", "its model_id must be a non-empty string"),
    "plugins_bad_shape:Gen": ("class Gen:\n    model_id = 'g'\n    def latent_shape(self, r):\n        raise ValueError('only 64 px')\n"
                              "    def __call__(self, *a, **k):\n        pass\n", "g: only 64 px"),
    "plugins_bad_output:Gen": ("import numpy as np\nclass Gen:\n    model_id = 'g'\n    def latent_shape(self, r):\n"
                               "        return (2,)\n    def __call__(self, prompts, latents, **k):\n"
                               "        return np.zeros((len(prompts), 2, 8, 8, 3), np.uint8)\n",
                               "generator g returned a ndarray, not a GenerationOutput(images)"),
    "plugins_bad_images:Gen": ("import numpy as np\nfrom stablerep_fast.generate import GenerationOutput\nclass Gen:\n"
                               "    model_id = 'g'\n    def latent_shape(self, r):\n        return (2,)\n"
                               "    def __call__(self, prompts, latents, **k):\n"
                               "        return GenerationOutput(np.zeros((len(prompts), 2, 8, 8, 3), np.float32))\n",
                               "returned images of shape (3, 2, 8, 8, 3) and dtype float32; expected a uint8 numpy array of shape (3, 2, 16, 16, 3)"),
    "plugins_raises_key:Gen": ("class Gen:\n    model_id = 'g'\n    def latent_shape(self, r):\n        return (2,)\n"
                               "    def __call__(self, prompts, latents, **k):\n        return {}['colour']\n",
                               "generator g (plugins_raises_key:Gen) failed on 3 captions from 'a blue dotted cross' (KeyError: 'colour')"),
    "plugins_raises_runtime:Gen": ("class Gen:\n    model_id = 'g'\n    def latent_shape(self, r):\n        return (2,)\n"
                                   "    def __call__(self, prompts, latents, **k):\n        raise RuntimeError('no GPU left')\n",
                                   "(RuntimeError: no GPU left); fix the generator"),
    "plugins_negative_shape:Gen": ("class Gen:\n    model_id = 'g'\n    def latent_shape(self, r):\n        return (-1, 0)\n"
                                   "    def __call__(self, *a, **k):\n        pass\n",
                                   "generator g (plugins_negative_shape:Gen): latent_shape(16) returned (-1, 0); every dimension must be >= 1"),
    "plugins_shape_raises:Gen": ("class Gen:\n    model_id = 'g'\n    def latent_shape(self, r):\n        return self.shape\n"
                                 "    def __call__(self, *a, **k):\n        pass\n",
                                 "generator g (plugins_shape_raises:Gen): latent_shape(16) raised AttributeError: "),
}  # fmt: skip


@pytest.mark.parametrize("model", list(BAD_PLUGINS))
def test_anything_but_a_generator_is_one_line_and_exit_2(model, captions_file, tmp_path, monkeypatch, capsys):
    source, message = BAD_PLUGINS[model]
    if source is not None:
        (tmp_path / f"{model.split(':')[0]}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["generate", "--captions", str(captions_file(3)), "--out", str(tmp_path / "out"), "--model", model,
            "--images-per-caption", "2", "--resolution", "16", "--save-size", "16", "--no-progress"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not list(tmp_path.glob("out/shard-*"))  # nothing half-written left behind


def test_a_generator_object_has_no_backend_choice_and_non_generators_are_refused():
    with pytest.raises(GenerateError, match="the blobs-v1 generator has no 'compile' backend"):
        load_generator(Blobs(), backend="compile", **CPU)
    with pytest.raises(GenerateError, match="not a generator: int lacks model_id, latent_shape, __call__"):
        load_generator(7, **CPU)
    with pytest.raises(GenerateError, match="an import path 'package.module:Generator'"):
        load_generator("no/such/folder", **CPU)
