"""Serving machinery shared by generate/stream/chat: sequences, the paged-block manager, the
continuous-batching scheduler and the sampler."""
