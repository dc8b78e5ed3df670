"""Tensor parallelism over processes: rank 0 (the caller's process) schedules and samples; ranks 1..N-1 are worker
processes started with torch.multiprocessing (spawn) that hold their part of the model and its KV cache.

Each step rank 0 sends the typed step (`SeqChunk`s, without logits) to every worker over a pipe, then every rank
runs the same forward pass on its heads and FFN columns, meeting in the all-gathers around `attn_output` and `ffn_down`
(`shard.py`): on a CPU with the native kernels every rank runs the one-call native step (its C code calls back for
the gathers), elsewhere the per-layer path; every rank runs the same one (checked once every rank has loaded).
Rank 0 computes the logits (the head is replicated) and samples. The pipes carry commands only;
a worker waits on its pipe without a timeout (an idle server is fine) and exits when rank 0's end closes, so
workers never outlive their engine. A worker that dies fails rank 0's next collective at once (its connections
close); rank 0 then raises `TensorParallelError` with the worker's traceback or exit code, never hangs.
"""

from __future__ import annotations

import logging
import time
import traceback
import weakref
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any, Callable, TypeVar

import torch
import torch.multiprocessing as mp

from ..config import EngineConfig
from ..engine.model_runner import Logits, ModelRunner, SeqChunk
from ..errors import TensorParallelError
from ..gguf.reader import GGUFFile
from ..kernels import release_heap
from ..kernels.choice import KernelChoice
from ..kernels.select import select_kernels
from ..models.attention import KVGroup
from ..models.base import DecoderLM, LoadOptions
from ..models.config import ModelConfig
from ..models.registry import load_model
from .group import Collective, connect_store, master_store
from .plan import RankShard
from .shard import TensorParallelLoad, plan_for

logger = logging.getLogger(__name__)
T = TypeVar("T")
READY_TIMEOUT_S = 600.0  # a worker loads its part as rank 0 loads its own


@dataclass(frozen=True)
class RankSpec:
    """What every rank loads: picklable, sent to each worker at spawn."""

    path: str
    config: EngineConfig
    shards: list[RankShard]
    kv_groups: list[KVGroup]
    block_size: int
    kv_dtype: torch.dtype
    threads: int

    def device(self, rank: int) -> torch.device:
        d = torch.device(self.config.device)
        return torch.device("cuda", (d.index or 0) + rank) if d.type == "cuda" else d


def load_rank(spec: RankSpec, rank: int, collective: Collective, gguf: GGUFFile | None = None) -> DecoderLM:
    """Rank `rank`'s part of the model (on CPU with the native kernels, its native step where it builds)."""
    gguf = gguf or GGUFFile(spec.path)
    device = spec.device(rank)
    c = spec.config
    kernels = select_kernels(c.cpu) if device.type == "cpu" and not c.reference else None
    mode = "reference" if c.reference else "fast"
    parallel = TensorParallelLoad(spec.shards, collective)
    model = load_model(
        gguf, LoadOptions(mode=mode, device=str(device), kernels=KernelChoice(kernels), parallel=parallel)
    )
    release_heap()
    gguf.release_pages()
    return model


def _worker_main(rank: int, port: int, spec: RankSpec, conn: Connection) -> None:
    """A worker process: join the group, load its part, then run each command rank 0 sends until told to stop or
    until rank 0's end of the pipe closes."""
    try:
        torch.set_num_threads(spec.threads)
        world = len(spec.shards)
        collective = Collective(connect_store("127.0.0.1", port, world), rank, world, spec.device(rank))
        model = load_rank(spec, rank, collective)
        runner = ModelRunner(model, spec.kv_groups, spec.block_size, spec.kv_dtype, str(spec.device(rank)))
        conn.send(("ready", model.native_decoder is not None))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            command, arg = conn.recv()
        except (EOFError, OSError):  # rank 0 is gone
            return
        if command == "stop":
            return
        try:
            getattr(runner, command)(*arg)
        except BaseException:
            conn.send(("error", traceback.format_exc()))
            return


class Workers:
    """Ranks 1..N-1: their processes and command pipes."""

    def __init__(self, spec: RankSpec, port: int) -> None:
        ctx = mp.get_context("spawn")
        self.procs: list[Any] = []
        self.conns: list[Connection] = []
        self.failed: str | None = None
        self.native_step: list[bool] = []  # per worker: whether it runs the native one-call step
        for rank in range(1, len(spec.shards)):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=_worker_main, args=(rank, port, spec, theirs), daemon=True, name=f"forwardpass-tp{rank}"
            )
            proc.start()
            theirs.close()  # only the worker holds its end: its exit reads as EOF here
            self.procs.append(proc)
            self.conns.append(ours)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        for rank, conn in enumerate(self.conns, 1):
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                raise TensorParallelError(f"tensor-parallel rank {rank} did not load within {timeout_s:.0f} s")
            try:
                status, detail = conn.recv()
            except EOFError:
                raise TensorParallelError(self._describe(rank, None)) from None
            if status != "ready":
                raise TensorParallelError(f"tensor-parallel rank {rank} failed to load:\n{detail}")
            self.native_step.append(bool(detail))

    def send(self, command: str, *arg: Any) -> None:
        for conn in self.conns:
            conn.send((command, arg))

    def failure(self, wait_s: float = 5.0) -> str:
        """Why the group broke: a worker's traceback, else its exit code (waiting up to `wait_s` for either)."""
        deadline = time.monotonic() + wait_s
        while True:
            for rank, (proc, conn) in enumerate(zip(self.procs, self.conns), 1):
                try:
                    if conn.poll():
                        status, detail = conn.recv()
                        if status == "error":
                            return self._describe(rank, detail)
                except (EOFError, OSError):
                    pass
                if proc.exitcode is not None:
                    return self._describe(rank, None)
            if time.monotonic() >= deadline:
                return "a collective failed but every worker is still running (rank 0 failed?)"
            time.sleep(0.05)

    def _describe(self, rank: int, detail: str | None) -> str:
        proc = self.procs[rank - 1]
        if detail is not None:
            return f"tensor-parallel rank {rank} failed:\n{detail}"
        proc.join(1.0)
        return f"tensor-parallel rank {rank} (pid {proc.pid}) exited unexpectedly (exit code {proc.exitcode})"

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop every worker: ask, then terminate, then kill what is left; reap them all. Later steps fail at once."""
        if self.failed is None:
            self.failed = "the tensor-parallel group was closed"
        for conn in self.conns:
            try:
                conn.send(("stop", ()))
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + timeout_s
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(2.0)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self.conns:
            conn.close()
        self.conns = []


class ParallelRunner(ModelRunner):
    """Rank 0's runner: each step goes to the workers first, then runs here; any failure ends the group."""

    def __init__(self, model: DecoderLM, spec: RankSpec, workers: Workers, store: Any) -> None:
        super().__init__(model, spec.kv_groups, spec.block_size, spec.kv_dtype, str(spec.device(0)))
        self.workers, self.world = workers, len(spec.shards)
        self._store = store  # rank 0 serves the rendezvous store: kept alive with the group
        self._closer = weakref.finalize(self, workers.close)

    def run(self, chunks: list[SeqChunk]) -> torch.Tensor:
        no_logits = [replace(c, logits=Logits.NONE) for c in chunks]  # only rank 0 computes the head
        return self._call(("run", no_logits), lambda: ModelRunner.run(self, chunks))

    def hidden(self, chunks: list[SeqChunk]) -> list[torch.Tensor]:
        return self._call(("hidden", chunks), lambda: ModelRunner.hidden(self, chunks))

    def copy_block(self, group: int, src: int, dst: int) -> None:
        self._call(("copy_block", group, src, dst), lambda: ModelRunner.copy_block(self, group, src, dst))

    def _call(self, command: tuple[Any, ...], local: Callable[[], T]) -> T:
        """Send `command` (a `ModelRunner` method and its arguments) to every worker, then run `local` here."""
        if self.workers.failed is not None:
            raise TensorParallelError(self.workers.failed)
        try:
            self.workers.send(*command)
            return local()
        except Exception as e:
            self.workers.failed = self.workers.failure()
            self.close()
            raise TensorParallelError(self.workers.failed) from e
        except BaseException:  # interrupted mid-step: the ranks' collectives no longer pair up
            self.workers.failed = "a step was interrupted on rank 0; the tensor-parallel group was stopped"
            self.close()
            raise

    def close(self) -> None:
        """Stop the workers (idempotent; also runs when the runner is collected or at exit)."""
        self._closer()


def start_tensor_parallel(
    gguf: GGUFFile,
    path: str,
    config: EngineConfig,
    model_config: ModelConfig,
    kv_groups: list[KVGroup],
    block_size: int,
    kv_dtype: torch.dtype,
    threads: int,
) -> ParallelRunner:
    """Plan the shards (a model that cannot be split fails here, before any process starts), spawn the workers,
    load rank 0's part in this process and return its runner once every rank is ready."""
    world = config.tensor_parallel_size
    shards = plan_for(gguf, model_config, world)
    spec = RankSpec(path, config, shards, kv_groups, block_size, kv_dtype, threads)
    if spec.device(0).type == "cuda" and torch.cuda.device_count() < world:
        raise ValueError(f"tensor_parallel_size {world} needs {world} CUDA devices, found {torch.cuda.device_count()}")
    store = master_store(world)
    workers = Workers(spec, store.port)
    try:
        collective = Collective(store, 0, world, spec.device(0))
        model = load_rank(spec, 0, collective, gguf)
        workers.wait_ready()
        native = model.native_decoder is not None
        if any(n != native for n in workers.native_step):  # their collectives would pair up, their math would not
            raise TensorParallelError(
                f"tensor-parallel ranks disagree on the native step (rank 0: {native}, the others: "
                f"{workers.native_step}); every rank must run the same path"
            )
    except BaseException:
        workers.close()
        raise
    logger.info("tensor parallel: %d ranks, %d threads each", world, threads)
    return ParallelRunner(model, spec, workers, store)
