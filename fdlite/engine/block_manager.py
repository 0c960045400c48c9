"""Paged KV blocks: ref-counted, with an optional prefix cache. Never hands out more blocks than it has.

Every block is in exactly one of three states:
  free       ref 0, no hash: in ``_free`` (a FIFO)
  in use     ref >= 1: in one or more sequences' block tables (shared only when prefix-cached)
  evictable  ref 0 but hashed: its K/V are still valid and can be matched again; in ``_evictable``, an LRU
             (least recently released first). ``allocate`` takes free blocks first, then evicts from here.

Prefix caching (vLLM's scheme): a *full* block that holds computed K/V is named by a chained hash,
``h_i = sha256(h_{i-1} || token ids of block i)`` (int64 little-endian bytes, h_{-1} = b""), so one hash
names the whole prefix up to and including that block. A new sequence whose first blocks hash the same reuses
them (ref += 1) and starts computing after them. Only full blocks are shared and a sequence only writes K/V at
positions after what it matched, so a shared block is never written. SHA-256 makes a collision (two different
prefixes sharing K/V) practically impossible, unlike Python's ``hash``.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict, deque

import numpy as np


def block_hash(prev: bytes, tokens) -> bytes:
    """Chained hash of one full block: tokens (block_size,) ints after the prefix named by ``prev``."""
    return hashlib.sha256(prev + np.asarray(tokens, "<i8").tobytes()).digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got {num_blocks} and {block_size}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._free = deque(range(num_blocks))
        self._ref = [0] * num_blocks
        self._hash: list[bytes | None] = [None] * num_blocks
        self._cached: dict[bytes, int] = {}                     # hash -> block id holding that prefix's K/V
        self._evictable: OrderedDict[int, None] = OrderedDict()  # ref-0 hashed blocks, LRU first

    # --- counts --------------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        """Blocks allocate() can hand out now (free + evictable)."""
        return len(self._free) + len(self._evictable)

    @property
    def num_in_use(self) -> int:
        return self.num_blocks - self.num_free

    def needed(self, table: list[int], total_tokens: int) -> int:
        """Blocks ``table`` must gain to hold ``total_tokens`` tokens."""
        return max(0, -(-total_tokens // self.block_size) - len(table))

    # --- allocate / free -----------------------------------------------------------------------------
    def allocate(self, table: list[int], total_tokens: int) -> bool:
        """Grow ``table`` in place to hold ``total_tokens``; False (and no change) when blocks run short."""
        if len(table) * self.block_size >= total_tokens:    # most decode steps: the last block has room
            return True
        n = self.needed(table, total_tokens)
        if n > self.num_free:
            return False
        for _ in range(n):
            if self._free:
                b = self._free.popleft()
            else:                                   # evict the least recently released cached block
                b, _ = self._evictable.popitem(last=False)
                del self._cached[self._hash[b]]
                self._hash[b] = None
            self._ref[b] = 1
            table.append(b)
        return True

    def free(self, table: list[int]) -> None:
        """Drop one reference to each block of ``table`` and clear it. Tail blocks are released first so
        that, under pressure, a prompt's tail is evicted before its (more shareable) head."""
        for b in reversed(table):
            self._ref[b] -= 1
            if self._ref[b] < 0:
                raise RuntimeError(f"block {b} freed more often than allocated")
            if self._ref[b] == 0:
                if self._hash[b] is not None:
                    self._evictable[b] = None
                else:
                    self._free.append(b)
        table.clear()

    # --- prefix cache --------------------------------------------------------------------------------
    def match_prefix(self, ids: list[int], max_blocks: int) -> tuple[list[int], list[bytes]]:
        """Longest run of cached full blocks that starts ``ids``, at most ``max_blocks``; takes a reference
        to each. Returns (block ids, their hashes)."""
        blocks: list[int] = []
        hashes: list[bytes] = []
        if not self.enable_prefix_caching:
            return blocks, hashes
        bs, prev = self.block_size, b""
        for i in range(min(max_blocks, len(ids) // bs)):
            h = block_hash(prev, ids[i * bs:(i + 1) * bs])
            b = self._cached.get(h)
            if b is None:
                break
            if self._ref[b] == 0:
                del self._evictable[b]
            self._ref[b] += 1
            blocks.append(b)
            hashes.append(h)
            prev = h
        return blocks, hashes

    def commit(self, table: list[int], hashes: list[bytes], ids: list[int], num_computed: int) -> None:
        """Name the blocks of ``table`` that became full of computed K/V since the last call (``hashes`` grows
        in place). A prefix another block already holds keeps that block; this one stays private."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        for i in range(len(hashes), num_computed // bs):
            h = block_hash(hashes[-1] if hashes else b"", ids[i * bs:(i + 1) * bs])
            hashes.append(h)
            b = table[i]
            if h not in self._cached and self._hash[b] is None:
                self._cached[h] = b
                self._hash[b] = h

    def check(self) -> None:
        """Assert the bookkeeping is consistent (tests call this after every run)."""
        free, evict = set(self._free), set(self._evictable)
        assert len(free) == len(self._free) and not free & evict, "a block is listed twice"
        for b in range(self.num_blocks):
            in_use = self._ref[b] > 0
            assert in_use + (b in free) + (b in evict) == 1, f"block {b}: ref {self._ref[b]}, in two states"
            assert (b in evict) <= (self._hash[b] is not None), f"evictable block {b} has no hash"
        assert all(self._hash[b] == h for h, b in self._cached.items()), "hash index out of sync"
