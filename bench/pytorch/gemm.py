#!/usr/bin/env python3
"""GFLOP/s of PyTorch's CPU matmul (MKL) at the shapes of crates/distill-nn/examples/gemm_table.rs, all threads
and one thread: the comparison column of docs/performance.md's GEMM table. Needs `pip install torch` (never a
dependency of the project). Usage: python3 bench/pytorch/gemm.py"""
import os
import time

import torch

SHAPES = [
    ("square 1024³", 1024, 1024, 1024),
    ("MLP fc1 fwd (128×784 · 784×1200)", 128, 1200, 784),
    ("MLP fc2 fwd (128×1200 · 1200×1200)", 128, 1200, 1200),
    ("MLP fc2 weight grad (1200×128 · 128×1200)", 1200, 1200, 128),
    ("BERT QKV (2048×384 · 384×1152)", 2048, 1152, 384),
    ("BERT FFN up (2048×384 · 384×1536)", 2048, 1536, 384),
    ("BERT FFN down (2048×1536 · 1536×384)", 2048, 384, 1536),
    ("BERT attention scores (64×32 · 32×64)", 64, 64, 32),
    ("CNN conv2 per image (64×288 · 288×121)", 64, 121, 288),
    ("DS-CNN pointwise per image (32×32 · 32×320)", 32, 320, 32),
]


def gflops(m, n, k):
    a, b = torch.rand(m, k), torch.rand(k, n)
    c = torch.empty(m, n)
    torch.matmul(a, b, out=c)
    t = time.perf_counter()
    torch.matmul(a, b, out=c)
    reps = max(1, min(100_000, int(0.3 / max(time.perf_counter() - t, 1e-7))))
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b, out=c)
        best = min(best, (time.perf_counter() - t) / reps)
    return 2.0 * m * n * k / best / 1e9


def main():
    cores = os.cpu_count()
    print(f"| shape | PyTorch {torch.__version__} (MKL), {cores} threads (GFLOP/s) | 1 thread (GFLOP/s) |")
    print("|---|---|---|")
    for label, m, n, k in SHAPES:
        torch.set_num_threads(cores)
        allt = gflops(m, n, k)
        torch.set_num_threads(1)
        one = gflops(m, n, k)
        print(f"| {label} | {allt:.1f} | {one:.1f} |")


if __name__ == "__main__":
    main()
