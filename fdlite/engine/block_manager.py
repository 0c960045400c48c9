"""Paged KV blocks: a free list and per-sequence block tables. Never hands out more than it has."""
from __future__ import annotations

from collections import deque


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got {num_blocks} and {block_size}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self._free = deque(range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self._free)

    def needed(self, table: list[int], total_tokens: int) -> int:
        """Blocks ``table`` must gain to hold ``total_tokens`` tokens."""
        return max(0, -(-total_tokens // self.block_size) - len(table))

    def allocate(self, table: list[int], total_tokens: int) -> bool:
        """Grow ``table`` in place to hold ``total_tokens``; False (and no change) when blocks run short."""
        n = self.needed(table, total_tokens)
        if n > len(self._free):
            return False
        table.extend(self._free.popleft() for _ in range(n))
        return True

    def free(self, table: list[int]) -> None:
        self._free.extend(table)
        table.clear()
