"""Work ahead of the consumer: one background thread computes the next items (the DALI loader's
file reads, the online loader's generated batches) while the caller trains on the current one."""

from __future__ import annotations

import queue
import threading
from contextlib import ExitStack
from typing import Callable, Iterator

import torch

_DONE = object()


def run_ahead(items: Iterator, make: Callable, depth: int, device: torch.device | None = None) -> Iterator[tuple]:
    """``(item, *make(item))`` for each of ``items``, in order, computed up to ``depth`` items
    ahead by one background thread (started at the first ``next``); on a CUDA ``device`` the
    thread runs on its own stream of that device, so its kernels overlap the caller's (``make``
    must return CPU tensors, or synchronise its stream before returning). Stopping the iteration stops the
    thread after its current item; an exception in ``make`` is raised here."""
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                results.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            with ExitStack() as scope:
                if device is not None and device.type == "cuda":
                    scope.enter_context(torch.cuda.device(device))
                    scope.enter_context(torch.cuda.stream(torch.cuda.Stream(device)))
                for item in items:
                    if not put((item, *make(item))):
                        return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put(exc)
            return
        put(_DONE)

    thread = threading.Thread(target=produce, name="run-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = results.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
