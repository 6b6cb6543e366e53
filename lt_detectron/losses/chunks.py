"""Row chunks for the fused losses' passes over (R, K) logits.

On CPU a fresh tensor of LVIS size (8,192 x 1,204 float32, 39 MB) is a new memory mapping whose first
write page-faults every page: it costs several elementwise passes over data already in memory. The
fused losses (sigmoid BCE / EQL v2 / ECM in sigmoid.py, C2AM in c2am.py) therefore run their
temporaries through small scratch buffers, a chunk of rows at a time, which stay in cache and are
reused. Accelerators take one chunk (fewer kernel launches; their allocators cache memory).
"""

import torch

__all__ = ["CHUNK_ELEMS", "row_chunk_size", "row_chunks"]

CHUNK_ELEMS = 1 << 18  # elements per row chunk on CPU (1 MiB of float32)


def row_chunk_size(R: int, K: int, device: torch.device) -> int:
    """Rows per chunk of an (R, K) tensor on ``device``: about :data:`CHUNK_ELEMS` elements on CPU,
    all R rows elsewhere; at least 1."""
    if device.type != "cpu":
        return max(R, 1)
    return max(1, min(R, CHUNK_ELEMS // max(K, 1)))


def row_chunks(R: int, K: int, device: torch.device):
    """(r0, r1) row ranges covering [0, R) in chunks of :func:`row_chunk_size` rows."""
    ch = row_chunk_size(R, K, device)
    return [(r0, min(R, r0 + ch)) for r0 in range(0, R, ch)]
