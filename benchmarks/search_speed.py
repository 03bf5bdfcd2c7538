"""Query latency of text-to-video search over 10k, 100k and 1M stored embeddings: exact and faiss.

    python benchmarks/search_speed.py [--sizes 10000 100000 1000000 --dim 512 --queries 30 -k 10]

The stored embeddings are random unit vectors (float32 [N, E]), the queries other random unit
vectors, searched one at a time as ``mugstan search`` and the search page do. Per N:

- exact: ``mugstan.search.query.top_k_exact``, what ``mugstan search`` does by default (matrix
  products over 65,536-row chunks with a running top-k: bounded memory);
- faiss flat: ``IndexFlatIP`` (``--backend faiss``), also exact; "agree" says whether it returned
  the same top-k ids as the exact path for every query;
- faiss IVF (``--backend faiss-ivf``; ``--no-ivf`` skips it): ``faiss_ivf_index``, sqrt(N) lists
  trained on at most 64 vectors per list, 1/8 of them searched; approximate, so its recall@k
  against the exact top-k is shown. Random vectors have no cluster structure, the worst case for
  IVF; real embeddings, which cluster, do better.

Latency is the median over the queries after one warm-up query; build is the time to create the
faiss index (flat: copy the vectors in; IVF: train + add).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch


def unit_vectors(n: int, dim: int, rng: np.random.Generator, block: int = 100_000) -> np.ndarray:
    """float32 [n, dim] random unit vectors, generated in blocks (no float64 copy of the whole)."""
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, block):
        x = rng.standard_normal((min(block, n - start), dim), dtype=np.float32)
        out[start:start + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def latency(search, queries: np.ndarray) -> tuple[float, np.ndarray]:
    """Median seconds per single-query call and the ids [Q, k] it returned."""
    search(queries[:1])  # warm-up
    times, ids = [], []
    for q in queries:
        start = time.perf_counter()
        ids.append(search(q[None]))
        times.append(time.perf_counter() - start)
    return float(np.median(times)), np.concatenate(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--no-ivf", action="store_true", help="skip the approximate IVF index")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch and faiss threads (default: theirs)")
    args = parser.parse_args()

    import faiss

    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)

    from mugstan.search.query import faiss_index, faiss_ivf_index, top_k_exact

    rng = np.random.default_rng(args.seed)
    queries = unit_vectors(args.queries, args.dim, rng)
    print(f"search latency, one query at a time, median of {args.queries}; E={args.dim}, k={args.k}, float32; "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), faiss {faiss.__version__} "
          f"({faiss.omp_get_max_threads()} threads), {os.cpu_count()} CPUs\n")
    head = "| N | memory (MiB) | exact (ms) | faiss flat (ms) | agree | flat build (s) |"
    rule = "|---:|---:|---:|---:|---|---:|"
    if not args.no_ivf:
        head += " faiss IVF (ms) | IVF lists / probed | IVF recall@k | IVF build (s) |"
        rule += "---:|---:|---:|---:|"
    print(head + "\n" + rule, flush=True)
    for n in args.sizes:
        emb = unit_vectors(n, args.dim, rng)
        t_exact, exact_ids = latency(lambda q, emb=emb: top_k_exact(q, emb, args.k)[1], queries)

        start = time.perf_counter()
        flat = faiss_index(emb)
        flat_build = time.perf_counter() - start
        t_flat, flat_ids = latency(lambda q, flat=flat: flat.search(q, args.k)[1], queries)
        flat = None  # free the copy of the vectors before the next index
        agree = "yes" if (flat_ids == exact_ids).all() else f"{(flat_ids == exact_ids).all(1).mean():.0%} of queries"
        row = (
            f"| {n:,} | {emb.nbytes / 2**20:,.0f} | {t_exact * 1e3:.2f} | {t_flat * 1e3:.2f} | {agree} "
            f"| {flat_build:.2f} |"
        )

        if not args.no_ivf:
            start = time.perf_counter()
            ivf = faiss_ivf_index(emb, seed=args.seed)
            ivf_build = time.perf_counter() - start
            t_ivf, ivf_ids = latency(lambda q, ivf=ivf: ivf.search(q, args.k)[1], queries)
            recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(ivf_ids, exact_ids, strict=True)])
            row += f" {t_ivf * 1e3:.2f} | {ivf.nlist} / {ivf.nprobe} | {recall:.1%} | {ivf_build:.1f} |"
            ivf = None
        print(row, flush=True)
        emb = None


if __name__ == "__main__":
    main()
