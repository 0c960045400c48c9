"""Tensor and expert parallelism: the sharding plan as host arithmetic (sharding, experts), one rank's share of
a model (rank: the per-rank builder; layers: the pieces that hold the collectives), a CPU simulator of the
N-rank forward (simulate), and the process model: ``Model.load(..., tensor_parallel_size=N)`` (runtime on
rank 0, worker on ranks 1..N-1, load: the per-rank loading hook), joined by a Communicator (comm: HostComm for
CPU ranks; nccl: NcclComm, one GPU per rank, the only module here that imports cupy). docs/parallel.md.
"""
from .sharding import (activation_scope, column_shards, gate_up_segments, heads_of, k_unit, kv_heads_of,
                       layout, n_unit, qkv_segments, reassemble, row_shards, split_even, take_cols, take_rows)

__all__ = ["activation_scope", "column_shards", "gate_up_segments", "heads_of", "k_unit", "kv_heads_of",
           "layout", "n_unit", "qkv_segments", "reassemble", "row_shards", "split_even", "take_cols",
           "take_rows"]
