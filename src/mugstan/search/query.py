"""``mugstan search``: the windows of an index that best match a text.

    mugstan search INDEX_DIR "a dog catches a frisbee" [-k 10] [--json] [--backend auto|exact|faiss|faiss-ivf]

Dual-encoder indexes are searched by the inner product of unit vectors:

- ``exact`` (default): ``top_k_exact``, matrix products over chunks of the index with a running
  top-k (bounded memory at any size);
- ``faiss``: ``faiss.IndexFlatIP`` (the optional ``search`` extra), also exact: the same results
  as ``exact`` up to float rounding and the order of exact ties;
- ``faiss-ivf``: ``faiss.IndexIVFFlat`` (sqrt(N) lists, ``--nprobe`` of them searched, 1/8 by
  default): approximate, for large indexes where an exact scan is too slow; it is built when the
  index is loaded (best with ``mugstan serve``, which loads once).

``benchmarks/results/search_speed.md`` compares them at 10k-1M windows: the two exact methods
are within 2x of each other either way (both scan the whole index, memory-bound; faiss keeps a
second copy of the vectors), so the exact path, which needs no optional dependency, is the
default at every size; ``faiss-ivf`` answers about 10x faster at a recall below 100%.

Mug indexes are always scored with the model's Mug similarity (in chunks); their scores carry
the model's logit scale.

The model is the checkpoint recorded in the index unless ``--checkpoint`` names another copy;
either way its sha256 must match the one the index was built with.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from mugstan.engine.distributed import device_arg
from mugstan.errors import ArgumentError, MismatchError, UserError
from mugstan.search.index import IndexFolder, model_identity

BACKENDS = ("auto", "exact", "faiss", "faiss-ivf")
# auto: exact search below this many windows, faiss IndexFlatIP (the same results) from there on
# when faiss is installed. Both scan every vector; at 1M windows faiss flat answered in 163 ms
# and exact in 239 ms on one thread (benchmarks/results/search_speed.md).
FAISS_FROM = 100_000


def choose_backend(requested: str, rows: int) -> str:
    """The backend ``requested`` means for an index of ``rows`` windows."""
    if requested != "auto":
        return requested
    return "faiss" if rows >= FAISS_FROM and have_faiss() else "exact"


def have_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def top_k_exact(queries: np.ndarray, emb: np.ndarray, k: int, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Exact maximum inner product search.

    queries float32 [Q, E], emb float32 [N, E] -> (scores float32 [Q, k'], indices int64 [Q, k']),
    best first, k' = min(k, N). The index is scanned ``chunk`` rows at a time, so the extra memory
    is [Q, chunk] scores whatever N.
    """
    if queries.ndim != 2 or emb.ndim != 2 or queries.shape[1] != emb.shape[1]:
        raise ValueError(f"queries must be [Q, E] and emb [N, E] with the same E, got {queries.shape} and {emb.shape}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    k = min(k, emb.shape[0])
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    best_v = best_i = None
    for start in range(0, emb.shape[0], chunk):
        block = torch.from_numpy(
            np.ascontiguousarray(emb[start : start + chunk], dtype=np.float32)
        )  # [c, E], a view when possible
        top = (q @ block.t()).topk(min(k, block.shape[0]), dim=1)
        values, indices = top.values, top.indices + start
        if best_v is not None:  # merge with the best so far
            values, indices = torch.cat([best_v, values], 1), torch.cat([best_i, indices], 1)
            top = values.topk(k, dim=1)
            values, indices = top.values, indices.gather(1, top.indices)
        best_v, best_i = values, indices
    return best_v.numpy(), best_i.numpy()


def faiss_index(emb: np.ndarray):
    """faiss.IndexFlatIP over float32 emb [N, E] (a copy of the vectors, exact search)."""
    import faiss

    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(np.ascontiguousarray(emb, dtype=np.float32))
    return index


def faiss_ivf_index(emb: np.ndarray, nprobe: Optional[int] = None, seed: int = 0):
    """faiss.IndexIVFFlat over float32 emb [N, E] for inner products: int(sqrt(N)) lists (fewer for
    tiny indexes: k-means wants 39 points per list) trained on at most 64 vectors per list,
    ``nprobe`` lists searched per query (default 1/8 of them; all of them gives exact results)."""
    import faiss

    emb = np.ascontiguousarray(emb, dtype=np.float32)
    n, dim = emb.shape
    nlist = max(1, min(int(math.sqrt(n)), n // 39))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(seed).choice(n, min(n, 64 * nlist), replace=False)
    index.train(emb[np.sort(sample)])
    index.add(emb)
    index.nprobe = min(nlist, nprobe or max(1, nlist // 8))
    return index


class Searcher:
    """An index and the model that built it, ready to answer text queries."""

    def __init__(
        self,
        index_dir,
        checkpoint: Optional[str] = None,
        backend: str = "auto",
        device: str = "cpu",
        nprobe: Optional[int] = None,
    ):
        from mugstan.engine.checkpoint import load_model

        if backend not in BACKENDS:
            raise ArgumentError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if backend.startswith("faiss") and not have_faiss():
            raise UserError(
                f"--backend {backend}: faiss is not installed; pip install 'mugstan[search]' (faiss-cpu), or use "
                "--backend exact"
            )
        self.meta, self.items, self.emb, self.mask = IndexFolder(index_dir).load()
        checkpoint = checkpoint or self.meta["model"]["checkpoint"]
        if model_identity(checkpoint)["sha256"] != self.meta["model"]["sha256"]:
            raise MismatchError(
                f"{checkpoint} is not the model that built {index_dir} ({self.meta['model']['checkpoint']}, "
                f"sha256 {self.meta['model']['sha256'][:12]}): its embeddings would not be comparable; "
                "pass that checkpoint with --checkpoint, or index again with this one"
            )
        self.model, self.cfg = load_model(
            checkpoint, device
        )  # cfg: how clips are read (captions); None for a converted file
        self.device = device
        # Mug scores are not inner products: always the chunked Mug similarity
        self.backend = "mug" if self.mask is not None else choose_backend(backend, len(self.emb))
        self._faiss = None
        if self.backend == "faiss":
            self._faiss = faiss_index(self.emb)
        elif self.backend == "faiss-ivf":
            self._faiss = faiss_ivf_index(self.emb, nprobe)

    @property
    def root(self) -> Path:
        """The indexed video folder; result paths are relative to it."""
        return Path(self.meta["root"])

    @torch.no_grad()
    def search(self, query: str, k: int = 10) -> list[dict]:
        """[{"rank", "path", "start", "end", "score"}], best first, at most k."""
        if not query.strip():
            raise ArgumentError("the query is empty: describe what the video shows")
        if k < 1:
            raise ArgumentError(f"k must be at least 1, got {k}")
        ids, mask = self.model.tokenize([query])
        text = self.model.encode_text(ids.to(self.device), mask.to(self.device))
        if self.backend == "mug":
            from mugstan.heads.base import Embeddings

            video = Embeddings(torch.from_numpy(self.emb).to(self.device), torch.from_numpy(self.mask).to(self.device))
            top = self.model.similarity(text, video)[0].float().cpu().topk(min(k, len(self.emb)))
            values, indices = top.values.numpy(), top.indices.numpy()
        else:
            q = text.x.float().cpu().numpy()  # [1, E]
            if self._faiss is not None:
                values, indices = self._faiss.search(q, min(k, len(self.emb)))
                found = indices[0] >= 0  # faiss-ivf: the probed lists may hold fewer than k
                values, indices = values[0][found], indices[0][found]
            else:
                values, indices = top_k_exact(q, self.emb, k)
                values, indices = values[0], indices[0]
        return [
            {"rank": r + 1, **self.items[i], "score": round(float(v), 4)}
            for r, (v, i) in enumerate(zip(values, indices, strict=True))
        ]


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """--backend, --nprobe, --checkpoint, --device (shared with ``mugstan serve``)."""
    parser.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help=f"auto (default): exact below {FAISS_FROM:,} windows, faiss from there when installed; "
        "exact: matrix products; faiss: IndexFlatIP, the same results; "
        "faiss-ivf: approximate, faster for large indexes",
    )
    parser.add_argument(
        "--nprobe", type=int, default=None, help="faiss-ivf: lists searched per query (default 1/8 of them)"
    )
    parser.add_argument("--checkpoint", default=None, help="the model (default: the one recorded in the index)")
    parser.add_argument(
        "--device",
        type=device_arg,
        default="cpu",
        help="where the text encoder runs: cpu, cuda, cuda:1, ... (default cpu)",
    )


def open_searcher(args: argparse.Namespace) -> Searcher:
    """A Searcher from the command line (errors are ``UserError``s: one line, exit 2)."""
    if args.nprobe is not None and args.nprobe < 1:
        raise ArgumentError(f"--nprobe must be at least 1, got {args.nprobe}")
    return Searcher(args.index_dir, args.checkpoint, args.backend, args.device, args.nprobe)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("index_dir", help="an index folder written by `mugstan index`")
    parser.add_argument("query", help="what the video shows, in words")
    parser.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    parser.add_argument(
        "--json", action="store_true", help="print the results as JSON: [{rank, path, start, end, score}]"
    )
    add_backend_arguments(parser)


def main(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise ArgumentError(f"-k must be at least 1, got {args.k}")
    if not args.query.strip():
        raise ArgumentError("the query is empty: describe what the video shows")
    searcher = open_searcher(args)
    results = searcher.search(args.query, args.k)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{len(results)} best matches for {args.query!r}; paths are relative to {searcher.root}")
    print(f"{'rank':>4}  {'score':>8}  {'window':>17}  path")
    for r in results:
        window = f"{r['start']:.2f}-{r['end']:.2f} s"
        print(f"{r['rank']:4d}  {r['score']:8.4f}  {window:>17}  {r['path']}")
    return 0
