#!/usr/bin/env python3
"""ONNX Runtime's side of `distill bench --onnxruntime`: times an exported student like distill times it.

DIR (written by distill) holds

    model.onnx                 the student, exported by distill
    inputs-b{B}.safetensors    its inputs at batch B, named in0, in1, ... in the graph's input order
    expected-b{B}.safetensors  distill's outputs on them (out0)

For each batch B found and each thread count of --threads, an InferenceSession with intra_op_num_threads =
that count (one inter-op thread, sequential execution, every graph optimisation, CPUExecutionProvider) runs
--warmup untimed passes, then --reps timed ones (each one `session.run`, timed with perf_counter); median and
90th percentile as numpy's linear method gives them. Before timing, the outputs are compared with distill's.
Prints one JSON line: {"ort_version", "timings": [{batch, threads, median_ms, p90_ms, reps, warmup}], "check":
[{batch, max_abs_diff, scale}]}.

    python bench/pytorch/ort_latency.py DIR --threads 1,2 --warmup 3 --reps 30

Never a dependency of distill: it needs Python with onnxruntime, safetensors and numpy.
"""

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from safetensors.numpy import load_file


def session(model: bytes, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def feeds_for(sess: ort.InferenceSession, inputs: dict) -> dict:
    names = [i.name for i in sess.get_inputs()]
    return {n: inputs[f"in{k}"] for k, n in enumerate(names)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("--threads", default="1")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()

    model = (args.dir / "model.onnx").read_bytes()
    batches = sorted(
        int(m.group(1))
        for p in args.dir.glob("inputs-b*.safetensors")
        if (m := re.fullmatch(r"inputs-b(\d+)\.safetensors", p.name))
    )
    if not batches:
        raise SystemExit(f"{args.dir}: no inputs-b*.safetensors")
    threads = [int(t) for t in args.threads.split(",")]

    check = []
    sess = session(model, threads[-1])
    for b in batches:
        inputs = load_file(str(args.dir / f"inputs-b{b}.safetensors"))
        want = load_file(str(args.dir / f"expected-b{b}.safetensors"))["out0"]
        got = sess.run(None, feeds_for(sess, inputs))[0]
        if got.shape != want.shape:
            raise SystemExit(f"batch {b}: onnxruntime's output shape {got.shape}, distill's {want.shape}")
        diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
        check.append({"batch": b, "max_abs_diff": diff, "scale": float(np.max(np.abs(want)))})

    timings = []
    for b in batches:
        inputs = load_file(str(args.dir / f"inputs-b{b}.safetensors"))
        for t in threads:
            sess = session(model, t)
            feeds = feeds_for(sess, inputs)
            for _ in range(args.warmup):
                sess.run(None, feeds)
            ms = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                sess.run(None, feeds)
                ms.append((time.perf_counter() - t0) * 1000.0)
            med, p90 = np.percentile(ms, [50, 90])
            timings.append(
                {
                    "batch": b,
                    "threads": t,
                    "median_ms": float(med),
                    "p90_ms": float(p90),
                    "reps": args.reps,
                    "warmup": args.warmup,
                }
            )
    print(json.dumps({"ort_version": ort.__version__, "timings": timings, "check": check}))


if __name__ == "__main__":
    main()
