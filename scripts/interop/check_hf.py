#!/usr/bin/env python3
"""Checks `distill export --format hf` text students with Hugging Face transformers.

Never run by CI. Two ways to run it:

    # 1. the exports and distill's logits written by the Rust test (tiny random BERTs, hermetic)
    DISTILL_INTEROP_OUT=/tmp/hf-check cargo test -p distill-tests --test export_predict text_
    python scripts/interop/check_hf.py /tmp/hf-check

    # 2. any text run: its HF export against `distill predict --json` on a safetensors export of the same model
    distill export RUN --format hf --to hf/ && distill export RUN --to st/
    distill predict st/ - --json --top-k 2 < sentences.txt > predictions.json
    python scripts/interop/check_hf.py --export hf/ --predictions predictions.json

In the first, `DIR/reference.json` lists cases: an export folder (relative to DIR), the sentences, the token
ids distill fed its network and the logits distill computed; in the second the reference is distill's
probabilities. Each export is loaded the way its README.md says:

* `BertForSequenceClassification` (a student with `pooling = "pooler"`): AutoModelForSequenceClassification,
  whose logits must equal distill's;
* `BertModel` (mean or CLS pooling): AutoModel's last hidden state, pooled as `distill_pooling` in config.json
  says, then `classifier.safetensors`.

The first also checks that AutoTokenizer gives distill's token ids. Exit status 1 if any case differs by more
than --tol (default 1e-4: logits in the first, probabilities in the second), or its top-1 class or tokenisation
differs.
"""

import argparse
import json
import pathlib
import sys

import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer


def hf_logits(export, sentences):
    cfg = AutoConfig.from_pretrained(export)
    tok = AutoTokenizer.from_pretrained(export)
    # distill's truncation, from the export's card: the first max_len - 1 tokens and the final [SEP]
    card = json.loads((pathlib.Path(export) / "card.json").read_text())
    max_len = card["preprocessing"]["max_len"]
    batch = tok(sentences, return_tensors="pt", padding=True, truncation=True, max_length=max_len)
    arch = cfg.architectures[0]
    with torch.no_grad():
        if arch == "BertForSequenceClassification":
            model = AutoModelForSequenceClassification.from_pretrained(export).eval()
            return arch, batch, model(**batch).logits
        model = AutoModel.from_pretrained(export).eval()
        hidden = model(**batch).last_hidden_state
        pooling = getattr(cfg, "distill_pooling", "mean")
        if pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1)
        head = load_file(str(pathlib.Path(export) / "classifier.safetensors"))
        return f"{arch} + {pooling} pooling + classifier", batch, pooled @ head["classifier.weight"].T + head["classifier.bias"]


def check_predictions(export, predictions, tol):
    preds = json.loads(predictions.read_text())["predictions"]
    sentences = [p["input"] for p in preds]
    arch, _, logits = hf_logits(str(export), sentences)
    probs = torch.softmax(logits.double(), -1)
    diff, top1 = 0.0, True
    for p, row in zip(preds, probs):
        top1 &= p["top"][0]["class"] == int(row.argmax())
        for s in p["top"]:
            diff = max(diff, abs(s["score"] - float(row[s["class"]])))
    good = top1 and diff <= tol
    print(f"{export}: {arch}; {len(sentences)} sentences; max |probability diff| {diff:.2e}; top-1 "
          f"{'equal' if top1 else 'DIFFERS'}: {'ok' if good else 'FAIL'}")
    return good


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=pathlib.Path, nargs="?", help="the folder the Rust test wrote (DISTILL_INTEROP_OUT)")
    ap.add_argument("--export", type=pathlib.Path, help="an HF export (with --predictions)")
    ap.add_argument("--predictions", type=pathlib.Path, help="`distill predict --json` output on the same model")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    if args.export:
        sys.exit(0 if check_predictions(args.export, args.predictions, args.tol) else 1)
    ref = json.loads((args.dir / "reference.json").read_text())
    ok = True
    for case in ref["cases"]:
        export = args.dir / case["export"]
        arch, batch, logits = hf_logits(str(export), case["sentences"])
        ids = batch["input_ids"].tolist()
        want_ids = case["input_ids"]
        same_ids = [r[: len(w)] for r, w in zip(ids, want_ids)] == want_ids and all(
            all(v == 0 for v in r[len(w):]) for r, w in zip(ids, want_ids))
        want = torch.tensor(case["logits"], dtype=logits.dtype)
        diff = (logits - want).abs().max().item()
        top1 = bool((logits.argmax(-1) == want.argmax(-1)).all())
        good = same_ids and top1 and diff <= args.tol
        ok &= good
        print(f"{case['export']}: {arch}; {len(case['sentences'])} sentences; token ids "
              f"{'equal' if same_ids else 'DIFFER'}; max |logit diff| {diff:.2e}; top-1 "
              f"{'equal' if top1 else 'DIFFERS'}: {'ok' if good else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
