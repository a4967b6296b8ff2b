"""Where the batch's tasks run: in this process, or on Dask workers.

The command line has one kind of task per image (small images: the whole pipeline) and one
per tile (large images, see :mod:`napari_uam.tiling`). Both are plain functions of picklable
arguments returning picklable results, so an executor only has to run ``fn(*args)`` somewhere
and hand back ``(index, result)`` pairs; all writing (outputs, markers, manifest) stays in
the calling process, so workers only need to read the input files.

- :class:`SerialExecutor`: in this process, in order (the default).
- :class:`DaskExecutor`: on a Dask ``distributed`` cluster, results as they complete:
  ``"local"`` starts a :class:`distributed.LocalCluster` of worker processes on this machine
  (one single-threaded worker per core unless told otherwise), ``"tcp://host:port"`` (or any
  scheduler address) joins an existing cluster, so the same command scales from a laptop to a
  cluster. Workers resolve ``device="auto"`` themselves, so a GPU worker runs the network
  and the feature engine on its GPU and a CPU worker on its CPU.

``distributed`` is optional (``pip install napari-uam[cluster]``).

A Dask scheduler runs the pickled code its clients send on its workers, and napari-uam
unpickles what comes back: connect only to a cluster you trust (your own, on a network you
trust), never to an address someone else gives you.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Callable, Iterator, Optional, Sequence
from urllib.parse import urlsplit

from ..errors import UAMError


class SerialExecutor:
    """Runs tasks one after another in this process."""

    n_workers = 1
    description = "serial (this process)"

    def map(self, fn: Callable, args: Sequence[tuple]) -> Iterator[tuple[int, object]]:
        """Yield ``(i, fn(*args[i]))`` in order."""
        for i, a in enumerate(args):
            yield i, fn(*a)

    def close(self) -> None:
        """Nothing to release."""


class DaskExecutor:
    """Runs tasks on a Dask cluster and yields results as they complete.

    Args:
        address: ``"local"`` for a new local cluster, or a scheduler address
            (``tcp://host:8786``).
        n_workers: worker processes of a local cluster (default: one per CPU core).
        threads_per_worker: threads per local worker (default 1: the numeric libraries
            already use one core each, and processes avoid the GIL).
        timeout: how long to try reaching a remote scheduler.

    Raises:
        UAMError: ``distributed`` is not installed or the scheduler cannot be reached.
    """

    def __init__(
        self, address: str = "local", n_workers: Optional[int] = None, threads_per_worker: int = 1, timeout: str = "30s"
    ):
        try:
            from distributed import Client, LocalCluster
        except ImportError as err:
            raise UAMError(
                "Dask distribution needs the 'distributed' package: pip install 'napari-uam[cluster]' "
                f"(or pip install distributed). ({err})"
            ) from None
        self._cluster = None
        if address == "local":
            n = int(n_workers or os.cpu_count() or 1)
            # Each worker process uses one core for NumPy, torch and numba, so that n workers
            # share n cores instead of each spawning a thread per core.
            env = {"NUMBA_NUM_THREADS": str(threads_per_worker), "OMP_NUM_THREADS": str(threads_per_worker)}
            self._cluster = LocalCluster(
                n_workers=n,
                threads_per_worker=threads_per_worker,
                processes=True,
                dashboard_address=None,
                env=env,
            )
            self.client = Client(self._cluster)
            self.description = f"Dask local cluster, {n} worker(s)"
        else:
            probe_scheduler(address)
            try:
                self.client = Client(address, timeout=timeout)
            except MemoryError:  # a length read from a non-Dask reply (once "3.07 EiB")
                raise UAMError(_not_dask(address, b"")) from None
            except Exception as err:  # unreachable scheduler, wrong protocol, version mismatch
                raise UAMError(f"Cannot reach the Dask scheduler at {address}: {err}") from None
            self.description = f"Dask scheduler {address}"
        self.n_workers = max(1, len(self.client.scheduler_info().get("workers", {})))

    def map(self, fn: Callable, args: Sequence[tuple]) -> Iterator[tuple[int, object]]:
        """Submit ``fn(*a)`` for every ``a`` and yield ``(i, result)`` as each completes.

        A task's exception is raised here; tasks not yet collected are cancelled when the
        caller stops iterating (an error, a Ctrl-C).
        """
        from distributed import as_completed

        futures = [self.client.submit(fn, *a, pure=False) for a in args]
        index = {f.key: i for i, f in enumerate(futures)}
        try:
            for fut in as_completed(futures):
                yield index[fut.key], fut.result()
        finally:
            self.client.cancel([f for f in futures if not f.done()])

    def close(self) -> None:
        """Close the client and the local cluster it started."""
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()


#: Largest first message a Dask scheduler sends (its handshake: a few hundred bytes).
_MAX_HANDSHAKE = 1 << 24


def _not_dask(address: str, head: bytes) -> str:
    shown = f" (it answered {head[:24]!r})" if head else ""
    return (
        f"{address} is not a Dask scheduler{shown}: another service listens there. Check the "
        "address and port (a scheduler listens on tcp://HOST:8786 by default; the dashboard's "
        "port 8787 is not the scheduler)."
    )


def probe_scheduler(address: str, timeout: float = 5.0) -> None:
    """Check that a ``tcp://`` address speaks Dask's protocol before a client connects.

    A Dask scheduler sends its handshake as soon as a connection is accepted, framed by an
    8-byte message length. Another service (a web server, SSH) sends text instead, which
    Dask's client reads as a length of exabytes and fails with "Unable to allocate 3.07 EiB".
    Only clear cases are refused: a service that says nothing within ``timeout`` is left to
    the client's own timeout, and other schemes (tls://, ucx://) are not probed.

    Raises:
        UAMError: nothing listens there, or something that is not a Dask scheduler does.
    """

    if "://" in address and not address.startswith("tcp://"):
        return
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parts.hostname, parts.port or 8786
    except ValueError as err:  # a port that is not a number
        raise UAMError(f"--dask {address}: {err}; give tcp://HOST:PORT.") from None
    if not host:
        raise UAMError(f"--dask {address}: no host; give tcp://HOST:PORT or 'local'.")
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as err:
        raise UAMError(f"Cannot reach the Dask scheduler at {address}: {err}") from None
    head = b""
    try:
        sock.settimeout(timeout)
        while len(head) < 8:
            chunk = sock.recv(8 - len(head))
            if not chunk:
                break
            head += chunk
    except OSError:  # silent: left to the client's timeout
        return
    finally:
        sock.close()
    if len(head) < 8 or not 0 < struct.unpack("<Q", head)[0] <= _MAX_HANDSHAKE:
        if not head:
            return  # closed without a word: the client says what it makes of it
        raise UAMError(_not_dask(address, head))


def make_executor(dask: Optional[str] = None, workers: Optional[int] = None, timeout: str = "30s"):
    """The executor for ``--dask`` / ``--workers``.

    Args:
        dask: None (no Dask), ``"local"`` or a scheduler address.
        workers: number of local workers; more than 1 without ``dask`` means ``"local"``.
        timeout: how long to try reaching a remote scheduler.

    Returns:
        :class:`SerialExecutor` or :class:`DaskExecutor`.
    """
    if workers is not None and workers < 1:
        raise UAMError(f"--workers must be at least 1 (got {workers}).")
    if dask is None and (workers or 1) > 1:
        dask = "local"
    if dask is None:
        return SerialExecutor()
    return DaskExecutor(dask, n_workers=workers, timeout=timeout)


#: Memory one local tile worker is budgeted (its own CUDA context, U-Net, radiomics and UAM on a
#: 2048-px tile): a budget, not a measurement; 16 workers ran within the H200 host's 128 GB and
#: the GPU's 139 GB (docs/performance.md, section wsi).
WORKER_HOST_GIB = 6.0
WORKER_GPU_GIB = 4.0
MAX_AUTO_WORKERS = 16


def auto_tile_workers(device: str) -> int:
    """Local worker processes that give tiled images on ``device`` their speed by default.

    On a GPU, the tiles' CPU stages (resampling, post-processing, writing parts) run side by
    side in one process per core while the workers share the GPU: 3.3x with 16 workers on one
    H200 (docs/performance.md, section ``wsi``), bounded here by host and free GPU memory. On
    the CPU, 1: the U-Net already uses every core (2 workers on 2 cores gained nothing). Also
    1 without the ``distributed`` package (the ``cluster`` extra).
    """
    if not str(device).startswith("cuda") or not dask_available():
        return 1
    import torch  # heavy: only asked when a GPU run is planned

    cores = os.cpu_count() or 1
    host_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    free_gpu_gib = torch.cuda.mem_get_info()[0] / 2**30
    return max(1, min(cores, MAX_AUTO_WORKERS, int(host_gib // WORKER_HOST_GIB), int(free_gpu_gib // WORKER_GPU_GIB)))


def dask_available() -> bool:
    """True when the optional ``distributed`` package imports."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


__all__ = ["DaskExecutor", "SerialExecutor", "auto_tile_workers", "dask_available", "make_executor"]
