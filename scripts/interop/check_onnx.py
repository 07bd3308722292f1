#!/usr/bin/env python3
"""Checks the ONNX files distill exports with onnx.checker and onnxruntime.

The Rust test `tests/tests/onnx_export.rs` exports every student architecture (small random-init shapes)
and leaves, per case, under `<target dir>/onnx-export/<case>/`:

    model.onnx             the exported model
    inputs.safetensors     the inputs it was run on (names = the graph's input names)
    expected.safetensors   distill's own eval-mode outputs (names = the graph's output names)

This script runs `onnx.checker.check_model(full_check=True)` (structure, opset, shape inference) and
onnxruntime on every case, and reports the largest |onnxruntime - distill| per output as a Markdown table
(for docs/interop.md). It exits with status 1 when a check fails or a difference exceeds --tol.
It is never run by CI: it needs Python with onnx, onnxruntime, numpy and safetensors.

    cargo test -p distill-tests --test onnx_export
    python scripts/interop/check_onnx.py [EXPORT_DIR]   # default: $CARGO_TARGET_DIR or target, /onnx-export
"""

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.numpy import load_file


def default_dir() -> Path:
    target = os.environ.get("CARGO_TARGET_DIR")
    root = Path(__file__).resolve().parents[2]
    return (Path(target) if target else root / "target") / "onnx-export"


def check_case(case: Path, tol: float):
    model = onnx.load(str(case / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    inputs = load_file(str(case / "inputs.safetensors"))
    expected = load_file(str(case / "expected.safetensors"))
    sess = ort.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    names_in = [i.name for i in sess.get_inputs()]
    names_out = [o.name for o in sess.get_outputs()]
    feeds = {n: inputs[n] for n in names_in}
    got = sess.run(names_out, feeds)
    diffs, scales = {}, {}
    for name, value in zip(names_out, got):
        want = expected[name]
        if value.shape != want.shape:
            raise ValueError(f"{case.name} `{name}`: shape {value.shape}, expected {want.shape}")
        diffs[name] = float(np.max(np.abs(value.astype(np.float64) - want.astype(np.float64))))
        scales[name] = max(1.0, float(np.max(np.abs(want))))
    # the batch dimension is symbolic: one row alone gives the first row's outputs
    one = sess.run(names_out, {n: v[:1] for n, v in feeds.items()})
    batch1 = max(
        float(np.max(np.abs(a.astype(np.float64) - b[:1].astype(np.float64))))
        for a, b in zip(one, got)
    )
    # f32 arithmetic in another order: `tol` absolute for outputs up to 1 in magnitude, relative above
    scale = max(scales.values())
    ok = all(d <= tol * scales[n] for n, d in diffs.items()) and batch1 <= tol * scale
    return {
        "case": case.name,
        "opset": opset,
        "ir": model.ir_version,
        "nodes": len(model.graph.node),
        "inputs": ", ".join(
            f"{i.name} {list(inputs[i.name].shape)}" for i in sess.get_inputs()
        ),
        "diffs": diffs,
        "batch1": batch1,
        "scale": scale,
        "ok": ok,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir", nargs="?", type=Path, default=default_dir())
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    cases = sorted(p.parent for p in args.dir.glob("*/model.onnx"))
    if not cases:
        print(
            f"no */model.onnx under {args.dir}: run `cargo test -p distill-tests --test onnx_export` first",
            file=sys.stderr,
        )
        return 1
    print(
        f"{datetime.date.today().isoformat()}, Python {platform.python_version()}, onnx {onnx.__version__}, "
        f"onnxruntime {ort.__version__}, numpy {np.__version__}, {platform.machine()}\n"
    )
    print("| case | inputs | IR / opset | nodes | max abs diff vs distill (per output) | max abs output | batch 1 vs batch 3 row | checker + ORT |")
    print("|---|---|---|---|---|---|---|---|")
    failed = 0
    for case in cases:
        try:
            r = check_case(case, args.tol)
        except Exception as e:  # noqa: BLE001 - report every failing case, then fail
            failed += 1
            print(f"| {case.name} | | | | | | | FAILED: {str(e).splitlines()[0]} |")
            continue
        failed += not r["ok"]
        diffs = ", ".join(f"`{k}` {v:.1e}" for k, v in r["diffs"].items())
        print(
            f"| {r['case']} | {r['inputs']} | {r['ir']} / {r['opset']} | {r['nodes']} | {diffs} | "
            f"{r['scale']:.3g} | {r['batch1']:.1e} | {'ok' if r['ok'] else 'FAILED'} |"
        )
    print(
        f"\n{len(cases) - failed} of {len(cases)} cases within {args.tol:g} "
        "(absolute, relative to the largest output where it exceeds 1)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
