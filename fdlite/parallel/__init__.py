"""Tensor and expert parallelism: the sharding plan as host arithmetic (sharding, experts) and a CPU
simulator of the N-rank forward (simulate) that proves the plan against the single-process logits.
No collective runs here: the NCCL process model is described in docs/parallel.md and is not built yet.
"""
from .sharding import (activation_scope, column_shards, gate_up_segments, heads_of, k_unit, kv_heads_of,
                       layout, n_unit, qkv_segments, reassemble, row_shards, split_even, take_cols, take_rows)

__all__ = ["activation_scope", "column_shards", "gate_up_segments", "heads_of", "k_unit", "kv_heads_of",
           "layout", "n_unit", "qkv_segments", "reassemble", "row_shards", "split_even", "take_cols",
           "take_rows"]
