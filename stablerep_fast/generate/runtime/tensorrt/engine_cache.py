"""Compiled artefacts on disk: what an engine is keyed by, and building each one once per node.

TensorRT's own diffusion demo finds engines by file name alone, so a farm can run an engine
built for another batch, resolution, GPU or TensorRT version, or for last week's weights. Here
an engine's file name carries a digest of everything it depends on (``EngineKey``), the full
key sits beside it as JSON and is checked on load, and ``build_once`` holds an exclusive
``fcntl.flock`` on a lock file beside the engine while it checks and builds: concurrent
workers on one node build once, the others wait and reuse.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from stablerep_fast.atomic import atomic_write, file_lock

# Bump when the exported graphs or the build settings change in a way the other fields miss.
ENGINE_FORMAT = 2


WEIGHTS_MEMO = "weights-files.json"  # in the engine cache: content hashes of checkpoint files


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def files_fingerprint(files: list[Path], memo: Path) -> str:
    """sha256 over the name, size and content hash of each of ``files`` (checkpoint files). A
    file's content hash is computed once per (absolute path, size, mtime) and remembered in the
    JSON file ``memo``, so a later start only stats the files instead of reading gigabytes."""
    memo.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(memo.with_name(memo.name + ".lock")):
        try:
            known = json.loads(memo.read_text())
        except (OSError, ValueError):
            known = {}
        digest, changed = hashlib.sha256(), False
        for path in sorted(Path(f) for f in files):
            stat, where = path.stat(), str(path.resolve())
            entry = known.get(where)
            if not isinstance(entry, dict) or (entry.get("size"), entry.get("mtime_ns")) != (stat.st_size, stat.st_mtime_ns):
                entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": file_sha256(path)}
                known[where], changed = entry, True
            digest.update(f"{path.name}|{stat.st_size}|{entry['sha256']}\n".encode())
        if changed:
            atomic_write(memo, json.dumps(known, indent=1, sort_keys=True).encode())
    return digest.hexdigest()


def weights_hash(module: torch.nn.Module) -> str:
    """sha256 of a module's architecture config (when it has one), its parameter and buffer
    names, shapes, dtypes and bytes. Any change of weights, precision or architecture changes it."""
    digest = hashlib.sha256()
    config = getattr(module, "config", None)
    if config is not None:
        as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        digest.update(json.dumps(as_dict, sort_keys=True, default=str).encode())
    digest.update(type(module).__name__.encode())
    for name, tensor in sorted(module.state_dict(keep_vars=False).items()):
        tensor = tensor.detach()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(tensor.contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def gpu_identity(device: torch.device) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of a CUDA device."""
    major, minor = torch.cuda.get_device_capability(device)
    return torch.cuda.get_device_name(device), f"{major}.{minor}"


@dataclass(frozen=True)
class EngineKey:
    """Everything a built engine depends on. Equal keys: the engine can be reused."""

    weights: str  # files_fingerprint of the component's checkpoint files, or weights_hash of its module
    component: str  # "unet", "vae_decoder", "text_encoder"
    resolution: int  # pixels (the latent side is resolution / 8)
    batch: int  # the static batch the engine was built for
    precision: str  # "fp16", "fp32", ...
    gpu: str  # GPU name
    compute_capability: str  # "9.0"
    trt_version: str
    shapes: str = ""  # every input's static shape, e.g. "sample=8x4x64x64;timestep=1;..."
    engine_format: int = ENGINE_FORMAT

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def filename(self) -> str:
        """Readable and unique: component, resolution, batch, precision, then the digest."""
        return f"{self.component}-{self.resolution}px-b{self.batch}-{self.precision}-{self.digest()[:20]}.plan"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def cached_engine(path: Path, key: EngineKey) -> bytes | None:
    """The engine at ``path`` if it exists and its key file says it was built for ``key``."""
    meta = path.with_suffix(".json")
    if not (path.is_file() and meta.is_file()):
        return None
    try:
        if json.loads(meta.read_text()).get("key") != asdict(key):
            return None
    except (OSError, ValueError):
        return None
    return path.read_bytes()


def build_once(
    cache_dir: Path,
    key: EngineKey,
    build: Callable[[], bytes],
    *,
    log: Callable[[str], None] = print,
) -> tuple[Path, bytes, bool]:
    """The engine for ``key`` from ``cache_dir``, built by ``build()`` (serialized bytes) if
    absent. Returns (path, bytes, built_here). Under the lock: check, else build, write the
    engine atomically, then its key file (the commit mark)."""
    cache_dir = Path(cache_dir)
    path = cache_dir / key.filename()
    data = cached_engine(path, key)  # fast path: no lock needed to read a committed engine
    if data is not None:
        return path, data, False

    def waiting() -> None:
        log(f"waiting for another process building the {key.component} engine {path.name} ...")

    with file_lock(path.with_suffix(".lock"), on_wait=waiting):
        data = cached_engine(path, key)
        if data is not None:
            log(f"reusing the {key.component} engine another process built: {path}")
            return path, data, False
        started = time.perf_counter()
        log(f"building the {key.component} engine (batch {key.batch}, {key.resolution} px, {key.precision}) -> {path}")
        data = build()
        atomic_write(path, data)
        record = {"key": asdict(key), "bytes": len(data), "build_seconds": round(time.perf_counter() - started, 1)}
        atomic_write(path.with_suffix(".json"), json.dumps(record, indent=2).encode())
        log(f"built the {key.component} engine in {time.perf_counter() - started:.0f} s ({len(data) / 2**20:.0f} MiB)")
        return path, data, True
