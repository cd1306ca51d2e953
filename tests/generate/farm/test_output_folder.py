"""What ``generate`` does with an output folder: never touch what it did not write, never adopt
shards of another configuration, one writer per shard, nothing left behind by a failure."""

import errno
import subprocess
import sys
import tarfile

import pytest

from stablerep_fast.cli import main
from stablerep_fast.errors import LockError, OutputError
from stablerep_fast.generate import GenerateConfig, GenerateError, farm_status, generate


def _config(captions, out, **overrides):
    settings = dict(captions=captions, out=out, model="shapes", images_per_caption=2, resolution=32, save_size=32,
                    shard_size=2, world_size=1, rank=0, device="cpu", progress=False)  # fmt: skip
    return GenerateConfig(**{**settings, **overrides})


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("names", [["notes.txt"], ["shard-000000.tar", "shard-000000.png"], ["shard-000001.idx"]])
def test_a_folder_of_someone_elses_files_is_refused_untouched(captions_file, tmp_path, names):
    out = tmp_path / "mine"
    out.mkdir()
    for name in names:
        (out / name).write_bytes(b"the user's " + name.encode())
    before = _snapshot(out)
    with pytest.raises(OutputError, match="did not write or cannot vouch for"):
        generate(_config(captions_file(5), out))
    assert _snapshot(out) == before


def test_shards_of_another_configuration_are_never_adopted(captions_file, tmp_path):
    """dataset.json lost: the done markers still say which configuration made the shards."""
    captions, out = captions_file(5), tmp_path / "data"
    generate(_config(captions, out, seed=0))
    (out / "dataset.json").unlink()
    before = _snapshot(out)
    for change in (dict(seed=1), dict(images_per_caption=3), dict(captions=captions_file(6, name="other.txt"))):
        with pytest.raises(GenerateError, match="belongs to a dataset made with another configuration"):
            generate(_config(**{"captions": captions, "out": out, **change}))
        assert _snapshot(out) == before
    summary = generate(_config(captions, out, seed=0))  # the same configuration: adopted, nothing redone
    assert summary.shards_skipped == 3 and summary.shards_written == 0 and (out / "dataset.json").exists()


def test_a_failed_write_leaves_no_temporary_file_and_the_next_run_cleans_old_ones(captions_file, tmp_path, monkeypatch):
    """A full disk fails the writes and the tar's last flush: one line, no temporary file left;
    temporary files a killed run left behind are removed by the next run, the user's are not."""
    captions, out = captions_file(5), tmp_path / "data"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(tarfile.TarFile, "addfile", full)
        patch.setattr(tarfile.TarFile, "close", full)
        assert main(["generate", "--captions", str(captions), "--out", str(out), "--model", "shapes", "--no-progress",
                     "--images-per-caption", "2", "--resolution", "32", "--save-size", "32", "--shard-size", "2"]) == 2  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json"]
    stale = [out / "shard-000001.tar.4242-deadbeef.srf-tmp", out / "shard-000001.idx.4242-deadbeef.srf-tmp"]
    for path in stale:
        path.write_bytes(b"left by a killed run")
    (out / "shard-000001.tar.bak").write_bytes(b"the user's")
    generate(_config(captions, out))
    assert not any(path.exists() for path in stale) and (out / "shard-000001.tar.bak").read_bytes() == b"the user's"


def test_the_disk_full_line_names_the_shard(captions_file, tmp_path, monkeypatch, capsys):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "addfile", full)
    out = tmp_path / "data"
    assert main(["generate", "--captions", str(captions_file(3)), "--out", str(out), "--model", "shapes", "--no-progress",
                 "--images-per-caption", "2", "--resolution", "32", "--save-size", "32"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert err == f"error: No space left on device: {out / 'shard-000000.tar'}; free some space or write elsewhere; re-running resumes"


def test_a_second_static_writer_of_the_same_shard_is_told_in_one_line(captions_file, tmp_path, capsys):
    captions, out = captions_file(5), tmp_path / "data"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('held', flush=True); time.sleep(60)", str(out / "shard-000000.lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockError, match="another process is writing shard-000000"):
            generate(_config(captions, out, assign="static"))
    finally:
        holder.kill()
        holder.wait()
    summary = generate(_config(captions, out, assign="static"))  # the holder is gone: the kernel dropped its lock
    assert summary.shards_written == 3 and not (out / "shard-000000.lock").exists()


@pytest.mark.parametrize("assign", ["dynamic", "static"])
def test_a_damaged_index_of_a_done_shard_is_reported_and_rewritten_on_resume(captions_file, tmp_path, assign, capsys):
    """farm-status names done shards whose .idx is gone or of another size; the next generate
    run rewrites it from the tar (the bytes first written), says so, and regenerates nothing."""
    captions, out = captions_file(6), tmp_path / "data"
    generate(_config(captions, out, assign=assign))
    written = _snapshot(out)
    (out / "shard-000000.idx").write_bytes(b"garbage")
    (out / "shard-000002.idx").unlink()
    assert farm_status(out).damaged_indexes == [0, 2]
    assert main(["farm-status", str(out)]) == 0
    assert "done shards with a missing or damaged .idx" in capsys.readouterr().out
    summary = generate(_config(captions, out, assign=assign))
    assert (summary.shards_written, summary.shards_skipped, summary.indexes_rewritten) == (0, 3, [0, 2])
    assert "note: the .idx of done shards [0, 2] was damaged or missing; rewritten from their tars" in summary.format(captions)
    assert _snapshot(out) == written and farm_status(out).damaged_indexes == []


def test_a_done_shard_whose_tar_cannot_be_read_either_is_left_with_a_warning(captions_file, tmp_path, caplog):
    captions, out = captions_file(4), tmp_path / "data"
    generate(_config(captions, out))
    tar = out / "shard-000001.tar"
    tar.write_bytes(bytes(tar.stat().st_size))  # the size its marker records, no tar inside
    (out / "shard-000001.idx").unlink()
    before = _snapshot(out)
    with caplog.at_level("WARNING", logger="stablerep_fast.generate"):
        summary = generate(_config(captions, out))
    assert summary.indexes_rewritten == [] and _snapshot(out) == before
    assert "shard-000001.idx is missing, and it cannot be rewritten" in caplog.text and "run generate again to redo it" in caplog.text
