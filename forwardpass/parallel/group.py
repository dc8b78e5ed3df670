"""The ranks' process group: gloo on CPU, NCCL on CUDA, built from a TCP store without touching
torch.distributed's global default group (so several engines can live in one process, and a user's own
`init_process_group` is left alone)."""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist

# A collective that waits this long has lost a rank that is alive but stuck; a rank that exits closes its
# connections and fails the others' collectives at once.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)
RENDEZVOUS_TIMEOUT = datetime.timedelta(minutes=2)


def master_store(world: int) -> dist.TCPStore:
    """Rank 0's store on a free local port (`store.port`); the workers connect to it."""
    return dist.TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False, timeout=RENDEZVOUS_TIMEOUT)


def connect_store(host: str, port: int, world: int) -> dist.TCPStore:
    return dist.TCPStore(host, port, world, is_master=False, timeout=RENDEZVOUS_TIMEOUT)


class Collective:
    """The all-gathers around `attn_output` and `ffn_down` (`shard.SplitOutputLinear`); each blocks until every rank
    has joined."""

    def __init__(self, store: dist.Store, rank: int, world: int, device: torch.device) -> None:
        self.rank, self.world, self.device = rank, world, device
        self._flat: dict[tuple[int, torch.dtype], list[torch.Tensor]] = {}  # (width, dtype) -> send, then receives
        if device.type == "cuda":  # untested here (no GPUs on the development machine)
            self.group = dist.ProcessGroupNCCL(store, rank, world)
        else:
            self.group = dist.ProcessGroupGloo(store, rank, world, COLLECTIVE_TIMEOUT)

    def all_gather_columns(self, x: torch.Tensor, widths: list[int], out: torch.Tensor | None = None) -> torch.Tensor:
        """(T, widths[rank]) on each rank -> (T, sum(widths)): the ranks' columns side by side, in rank order
        (into `out` when given). The collective's buffers are kept and reused: a fresh set per call measured ~100 us
        more per gather here (about the cost of the gather itself)."""
        width, rows = max(widths), x.shape[0]
        send, parts = self._buffers(rows, width, x.dtype)
        send[:, : x.shape[1]].copy_(x)  # the columns past a narrower rank's width are never read
        self.group.allgather([parts], [send]).wait()
        if out is None:
            out = torch.empty(rows, sum(widths), dtype=x.dtype, device=x.device)
        return torch.cat([p[:, :w] for p, w in zip(parts, widths)], dim=1, out=out)

    def _buffers(self, rows: int, width: int, dtype: torch.dtype) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """A send buffer and one receive buffer per rank, (rows, width) each: views of flat buffers that grow."""
        key = (width, dtype)
        flat = self._flat.get(key)
        if flat is None or flat[0].numel() < rows * width:
            flat = [torch.empty(rows * width, dtype=dtype, device=self.device) for _ in range(self.world + 1)]
            self._flat[key] = flat
        views = [f[: rows * width].view(rows, width) for f in flat]
        return views[0], views[1:]
