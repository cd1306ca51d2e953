"""Dynamic shard claiming: ranks take the next unclaimed shard of one output folder.

Any number of processes pointed at one folder (torchrun, Slurm, or N independent commands) share
the work with no rendezvous. The protocol, on any store where ``storage.create`` is atomic:

1. **Claim.** A rank holds shard S once it *creates* ``shard-S.claim-0.json`` (exclusive create:
   of several ranks trying, exactly one succeeds). The record says who (holder id, host, pid,
   rank), since when, and the lease in seconds.
2. **Heartbeat.** While generating, a background thread rewrites the holder's own claim file
   every lease/4 with a new ``renewed`` time (only its creator ever writes a claim file).
3. **Takeover.** A claim whose ``renewed`` is more than ``lease`` seconds old (wall clocks:
   keep hosts' clocks within a small fraction of the lease, as NTP does) on a shard without a
   done marker is expired: another rank takes the shard by creating generation G+1,
   ``shard-S.claim-<G+1>.json``, again exclusively, so two takers never both win.
   A claim made on this host by a process that no longer exists (killed) expires at once, so a
   restarted run resumes without waiting a lease. A claim file that is not a claim record
   (damaged) counts as renewed when the file last changed and expires after the taker's lease,
   with a warning naming it.
4. **Lost claims.** A holder whose claim was taken over (a file of a later generation exists)
   stops: its heartbeat notices, and it checks again before publishing. Publishing itself is
   exclusive (the tar where the store allows, and the done marker), so a shard is never
   published twice and a late holder never writes over a finished shard.

Claim files stay after the shard is done: ``farm-status`` reads them (who is working on what).
A holder that fails (an error, Ctrl-C) removes its claim so that another rank can start at once.

Costs on an object store: a rank lists the folder once per shard it finishes (and once per poll
while every remaining shard is held), reads the claim records of unfinished shards once at
start, then only those whose file has not changed for half a lease.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from stablerep_fast import shards, storage
from stablerep_fast.errors import StableRepError

DEFAULT_LEASE = 300.0  # seconds without a heartbeat before a claim may be taken over

log = logging.getLogger("stablerep_fast.generate")


@dataclass(frozen=True)
class Claim:
    """One claim record: generation ``generation`` of ``shard``'s claim."""

    shard: int
    generation: int
    holder: str  # unique per process run (a random hex id)
    host: str
    pid: int
    rank: int | None
    claimed: float  # Unix time the claim was made
    renewed: float  # Unix time of the last heartbeat
    lease: float
    beats: int = 0

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) - self.renewed > self.lease

    def holder_gone(self) -> bool:
        """Whether it was made on this host by a process that no longer exists (killed)."""
        return self.host == socket.gethostname() and self.pid > 0 and not pid_alive(self.pid)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()


def parse_claim(data: bytes) -> Claim:
    """The claim record a claim file holds; ValueError saying why when it holds none."""
    try:
        record = json.loads(data)
        claim = Claim(**record)
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise ValueError(" ".join(str(exc).split())[:80]) from None
    numbers = (claim.claimed, claim.renewed, claim.lease)
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in numbers) or not isinstance(claim.pid, int):
        raise ValueError("its times, lease or pid are not numbers")
    return claim


class ClaimLost(StableRepError):
    """The shard this process was writing was taken over, or published by another process first."""


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (a reused pid counts as alive: the safe side)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def new_holder_id() -> str:
    """A process's holder id: unique across hosts and runs."""
    return uuid.uuid4().hex[:16]


def latest_generations(listing: list[str]) -> dict[int, int]:
    """{shard: the latest claim generation} from a folder's file names."""
    latest: dict[int, int] = {}
    for name in listing:
        parsed = shards.parse_claim_name(name)
        if parsed is not None and parsed[1] >= latest.get(parsed[0], -1):
            latest[parsed[0]] = parsed[1]
    return latest


class ClaimBoard:
    """One process's view of a folder's claims: ``try_claim`` a shard, ``holds`` it still,
    ``renew`` it (called by ``Heartbeat``)."""

    def __init__(self, folder: storage.Location, *, lease: float = DEFAULT_LEASE, rank: int | None = None,
                 holder: str | None = None):  # fmt: skip
        storage.check_claims_safe(folder)
        self.folder = folder
        self.lease = float(lease)
        self.rank = rank
        self.holder = holder or new_holder_id()
        self.host = socket.gethostname()
        self._unreadable: set[str] = set()  # claim files warned about

    def _location(self, shard: int, generation: int) -> str:
        return storage.join(self.folder, shards.claim_name(shard, generation))

    def try_claim(self, shard: int, generation: int) -> Claim | None:
        """Create generation ``generation`` of ``shard``'s claim (0: a fresh claim, G+1: taking over
        an expired G); the Claim when this process won, None when another was first."""
        now = time.time()
        claim = Claim(shard, generation, self.holder, self.host, os.getpid(), self.rank, now, now, self.lease)
        return claim if storage.create(self._location(shard, generation), claim.to_bytes()) else None

    def holds(self, claim: Claim) -> bool:
        """Whether ``claim`` is still this process's: no later generation exists."""
        return not storage.exists(self._location(claim.shard, claim.generation + 1))

    def expired(self, claim: Claim, now: float | None = None) -> bool:
        """Whether ``claim`` may be taken over: its lease ran out, or it was made on this host by a
        process that no longer exists."""
        if claim.expired(now):
            return True
        return claim.holder != self.holder and claim.holder_gone()

    def read_claims(self, wanted: list[tuple[int, int]]) -> list[Claim]:
        """The claim records of (shard, generation) pairs, read concurrently on object stores.
        A file that holds no claim record (being written on a store without atomic creates, or
        damaged) counts as renewed when it last changed, with this process's lease, so it is
        taken over once that is a lease old; a warning names it, once."""
        locations = [self._location(shard, generation) for shard, generation in wanted]
        found = storage.read_many(locations)
        claims = []
        for (shard, generation), location in zip(wanted, locations):
            try:
                data = found.get(location)
                try:
                    claims.append(parse_claim(data if isinstance(data, bytes) else storage.read_bytes(location)))
                except ValueError as exc:
                    claims.append(self._unreadable_claim(location, shard, generation, str(exc)))
            except FileNotFoundError:
                continue  # released meanwhile
        return claims

    def _unreadable_claim(self, location: str, shard: int, generation: int, why: str) -> Claim:
        changed = storage.modified(location)
        if location not in self._unreadable:
            self._unreadable.add(location)
            wait = max(0.0, changed + self.lease - time.time())
            log.warning(f"{location} is not a claim record ({why}); taken as a claim that expires a lease "
                        f"({self.lease:g} s) after the file last changed, in {wait:.0f} s; remove it to free the shard now")  # fmt: skip
        return Claim(shard, generation, "unknown", "unknown", 0, None, changed, changed, self.lease)

    def release(self, claim: Claim) -> None:
        """Remove ``claim`` after a failure, if it is still this process's, so another rank can start."""
        if self.holds(claim):
            storage.remove(self._location(claim.shard, claim.generation))

    def renew(self, claim: Claim) -> Claim | None:
        """Rewrite ``claim`` with ``renewed`` = now; None (nothing written) when it was taken over."""
        if not self.holds(claim):
            return None
        renewed = Claim(**{**asdict(claim), "renewed": time.time(), "beats": claim.beats + 1})
        storage.write_bytes(self._location(claim.shard, claim.generation), renewed.to_bytes())
        return renewed


class Heartbeat:
    """Renews a claim every ``lease / 4`` seconds in a daemon thread while the shard is generated.
    ``lost`` is set once the claim was taken over (or renewing it failed for a whole lease)."""

    def __init__(self, board: ClaimBoard, claim: Claim):
        self.board = board
        self.claim = claim
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"claim-heartbeat-{claim.shard}", daemon=True)

    def _run(self) -> None:
        interval = self.board.lease / 4
        last_ok = time.monotonic()
        while not self._stop.wait(interval):
            try:
                renewed = self.board.renew(self.claim)
            except OSError:  # a store hiccup: try again at the next beat, give up after a lease
                if time.monotonic() - last_ok > self.board.lease:
                    self.lost.set()
                    return
                continue
            if renewed is None:
                self.lost.set()
                return
            self.claim, last_ok = renewed, time.monotonic()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def claim_shards(board: ClaimBoard, todo: list[int], *, poll: float | None = None) -> Iterator[Claim]:
    """Claim the shards of ``todo`` one at a time, in that order of preference, until each is done
    (``shards.is_done`` on the folder's listing): yields a Claim, and claims the next one once
    the caller is back.

    Unclaimed shards first; when every remaining shard is held, waits (``poll`` seconds between
    looks; default lease/4, at most 30 s) and takes over claims that expire. Returns when no shard
    of ``todo`` is left without a done marker, so a rank ends only when the whole job is done.
    """
    poll = min(board.lease / 4, 30.0) if poll is None else poll
    remaining = list(todo)
    seen: set[tuple[int, int]] = set()  # claims read once already
    while True:
        files = storage.list_files(board.folder)
        remaining = [s for s in remaining if not shards.is_done(board.folder, s, files)]
        if not remaining:
            return
        latest = latest_generations(list(files))
        claim = next(filter(None, (board.try_claim(s, 0) for s in remaining if s not in latest)), None)
        if claim is None:
            claim = _take_over(board, remaining, latest, files, seen)
        if claim is None:
            time.sleep(poll)
            continue
        yield claim


def _take_over(board: ClaimBoard, remaining: list[int], latest: dict[int, int], files: dict,
               seen: set[tuple[int, int]]) -> Claim | None:  # fmt: skip
    """Take over the first expired claim among ``remaining`` shards; None when all are alive.
    Reads the claims not ``seen`` before and those whose file is half a lease old (a live holder
    rewrites its own every quarter lease)."""
    now = time.time()
    wanted = []
    for shard in remaining:
        if shard in latest:
            key = (shard, latest[shard])
            mtime = files[shards.claim_name(*key)][1]
            if key not in seen or mtime is None or now - mtime > board.lease / 2:
                wanted.append(key)
                seen.add(key)
    for claim in board.read_claims(wanted):
        if board.expired(claim, now):
            taken = board.try_claim(claim.shard, claim.generation + 1)
            if taken is not None:
                return taken
    return None
