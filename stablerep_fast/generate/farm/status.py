"""``farm-status``: where a generation farm stands, from its output folder alone.

Reads ``dataset.json``, the done markers (captions, images, host, finish time) and the claim
records (``claims.py``) of a folder or URL; changes nothing. With ``generate --score``, the
scores' histogram over the shards done so far (their done markers'). Rates are images finished over the
last ``interval`` seconds (or since the first claim, when the farm is younger), per host and
overall; the ETA divides the images left by the overall rate. A claim is live while its
heartbeat is younger than its lease and, on this host, its process exists; a dynamic farm
with shards left and no live claim has no ETA (nothing is working on it).
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field

from stablerep_fast import shards, storage
from stablerep_fast.errors import DataError
from stablerep_fast.generate.farm.claims import Claim, latest_generations, parse_claim


@dataclass
class HostStatus:
    shards_done: int = 0
    images_done: int = 0
    images_recent: int = 0  # finished within the interval
    claimed: int = 0  # shards it holds now (live claims)
    images_per_second: float = 0.0


@dataclass
class FarmStatus:
    folder: str
    num_shards: int
    shards_done: int
    shards_claimed: int  # held by a live claim, not done
    shards_left: int  # neither done nor held (expired claims included)
    expired_claims: list[dict]  # {shard, host, pid, holder, age, why}: lease ran out, or holder gone; shard not done
    damaged: list[int]  # shards whose done marker cannot be read or whose tar has another size
    captions_total: int
    captions_done: int
    images_total: int
    images_done: int
    interval: float  # seconds the rates are measured over
    images_per_second: float
    eta_seconds: float | None  # None: no rate yet
    hosts: dict[str, HostStatus] = field(default_factory=dict)
    assign: str | None = None  # the split dataset.json records ("dynamic", "static"); None: not recorded
    unreadable_claims: list[str] = field(default_factory=list)  # claim files holding no claim record
    damaged_indexes: list[int] = field(default_factory=list)  # done shards whose .idx is missing or of another size
    scores: dict | None = None  # generate --score: the histogram of the done shards' scores (shards.merge_score_histograms)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)


def farm_status(folder: storage.Location, *, interval: float = 600.0, now: float | None = None) -> FarmStatus:
    """The status of the farm writing ``folder`` (a path or URL); DataError when it holds no dataset."""
    now = time.time() if now is None else now
    try:
        dataset = shards.read_dataset(folder)
    except FileNotFoundError as exc:
        raise DataError(f"{exc}") from None
    num_shards = int(dataset.get("num_shards") or 0)
    k = int(dataset["images_per_caption"])
    files = storage.list_files(folder)
    done, damaged = shards.done_shards(folder, files)
    latest = latest_generations(list(files))
    pending = {s: g for s, g in latest.items() if s not in done}
    claim_locations = {s: storage.join(folder, shards.claim_name(s, g)) for s, g in pending.items()}
    claim_bytes = storage.read_many(list(claim_locations.values()))
    claims: dict[int, Claim] = {}
    unreadable = []
    for shard, location in claim_locations.items():
        data = claim_bytes.get(location)
        if not isinstance(data, bytes):
            continue  # removed meanwhile (released after a failure): counted as left
        try:
            claims[shard] = parse_claim(data)
        except ValueError:
            unreadable.append(shards.claim_name(shard, pending[shard]))  # damaged (or being written): counted as left
    why = {s: "lease ran out" if c.expired(now) else "holder process gone" for s, c in claims.items()
           if c.expired(now) or c.holder_gone()}  # fmt: skip
    live = {s: c for s, c in claims.items() if s not in why}
    expired = [dict(shard=s, host=c.host, pid=c.pid, holder=c.holder, age=round(now - c.renewed, 1), why=why[s])
               for s, c in sorted(claims.items()) if s in why]  # fmt: skip

    hosts: dict[str, HostStatus] = defaultdict(HostStatus)
    starts = [c.claimed for c in claims.values()] + [r.get("finished", now) - r.get("seconds", 0) for r in done.values()]
    window = max(min(interval, now - min(starts, default=now)), 1e-9)
    for record in done.values():
        host = hosts[str(record.get("host", "unknown"))]
        host.shards_done += 1
        host.images_done += int(record.get("images", 0))
        if now - float(record.get("finished", -math.inf)) <= window:
            host.images_recent += int(record.get("images", 0))
    for claim in live.values():
        hosts[claim.host].claimed += 1
    for host in hosts.values():
        host.images_per_second = round(host.images_recent / window, 3)

    captions_total = int(dataset.get("num_captions") or 0)
    images_done = sum(int(r.get("images", 0)) for r in done.values())
    rate = sum(h.images_recent for h in hosts.values()) / window
    images_left = captions_total * k - images_done
    idle = dataset.get(shards.ASSIGN_FIELD) == "dynamic" and not live and images_left > 0  # nothing works on it
    scored = [r["scores"] for r in done.values() if isinstance(r.get("scores"), dict)]
    return FarmStatus(
        folder=str(folder),
        num_shards=num_shards,
        shards_done=len(done),
        shards_claimed=len(live),
        shards_left=num_shards - len(done) - len(live),
        expired_claims=expired,
        damaged=sorted(damaged),
        captions_total=captions_total,
        captions_done=sum(int(r.get("captions", 0)) for r in done.values()),
        images_total=captions_total * k,
        images_done=images_done,
        interval=round(window, 3),
        images_per_second=round(rate, 3),
        eta_seconds=round(images_left / rate, 1) if rate > 0 and not idle else (0.0 if images_left <= 0 else None),
        hosts=dict(sorted(hosts.items())),
        assign=dataset.get(shards.ASSIGN_FIELD),
        unreadable_claims=sorted(unreadable),
        damaged_indexes=[s for s, record in sorted(done.items()) if shards.index_problem(folder, s, record, files)],
        scores=shards.merge_score_histograms(scored) if scored else None,
    )


def format_status(status: FarmStatus) -> str:
    """The status as a few lines for people."""
    if status.eta_seconds is not None:
        eta = _duration(status.eta_seconds)
    elif status.assign == "dynamic" and not status.shards_claimed:
        eta = "none: no process holds a live claim (run generate again to finish)"
    else:
        eta = "unknown (no shard finished in the interval)"
    lines = [
        f"{status.folder}: {status.shards_done}/{status.num_shards} shards done, {status.shards_claimed} claimed, "
        f"{status.shards_left} left",
        f"captions {status.captions_done}/{status.captions_total}, images {status.images_done}/{status.images_total}",
        f"{status.images_per_second:.2f} images/s over the last {_duration(status.interval)}; ETA {eta}",
    ]
    if status.scores is not None:
        lines.append(f"scores: mean {status.scores['mean']:.4f} over {status.scores['count']} images of the done shards "
                     f"(min {status.scores['min']:.4f}, max {status.scores['max']:.4f})")  # fmt: skip
    if status.expired_claims:
        shown = ", ".join(f"{c['shard']} ({c['host']} pid {c['pid']}, {c['why']}, last heartbeat {_duration(c['age'])} ago)"
                          for c in status.expired_claims[:5])  # fmt: skip
        more = f", and {len(status.expired_claims) - 5} more" if len(status.expired_claims) > 5 else ""
        lines.append(f"expired claims (taken over by the next free rank): {shown}{more}")
    if status.unreadable_claims:
        lines.append(f"unreadable claim files (taken over a lease after they last changed; remove them to free their "
                     f"shards now): {', '.join(status.unreadable_claims[:5])}")  # fmt: skip
    if status.damaged:
        lines.append(f"damaged shards (done marker unreadable or tar of another size; the next generate run redoes them): {status.damaged[:10]}")
    if status.damaged_indexes:
        lines.append(f"done shards with a missing or damaged .idx (the loader reads their tars instead; the next generate "
                     f"run rewrites them): {status.damaged_indexes[:10]}")  # fmt: skip
    for name, host in status.hosts.items():
        lines.append(f"  {name}: {host.shards_done} shards, {host.images_done} images, {host.images_per_second:.2f} images/s, "
                     f"{host.claimed} claimed now")  # fmt: skip
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
