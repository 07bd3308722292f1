#!/usr/bin/env python3
"""Fine-tunes a Hugging Face BERT on SST-2 the usual transformers way and saves it as a folder: the "already
fine-tuned classifier" that plugins/text/recipes/sst2-hf-teacher.toml distils without training a teacher.

A user brings their own; this script makes one to try the recipe with, and prints the GLUE dev accuracy that
`distill run` must then report for the teacher (its forward pass is transformers', see docs/interop.md).
Never run by CI.

    python scripts/interop/finetune_hf_sst2.py --base $DISTILL_MODELS/all-MiniLM-L6-v2 \\
        --data $DISTILL_DATA/sst2 --out $DISTILL_MODELS/minilm-sst2 --steps 400
"""

import argparse
import csv
import os

import torch
from transformers import AutoTokenizer, BertForSequenceClassification


def read_tsv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(r[0], int(r[1])) for r in rows[1:]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="a BERT folder (config.json, weights, tokenizer.json)")
    ap.add_argument("--data", required=True, help="the SST-2 folder (train.tsv, dev.tsv)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--max-len", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(args.base)
    model = BertForSequenceClassification.from_pretrained(args.base, num_labels=2)
    train, dev = read_tsv(os.path.join(args.data, "train.tsv")), read_tsv(os.path.join(args.data, "dev.tsv"))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / args.steps)
    order = torch.randperm(len(train)).tolist()
    model.train()
    for step in range(args.steps):
        idx = order[step * args.batch:(step + 1) * args.batch]
        batch = tok([train[i][0] for i in idx], padding=True, truncation=True, max_length=args.max_len,
                    return_tensors="pt")
        labels = torch.tensor([train[i][1] for i in idx])
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % 50 == 0:
            print(f"step {step}: loss {loss.item():.4f}", flush=True)
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(dev), 128):
            chunk = dev[i:i + 128]
            batch = tok([s for s, _ in chunk], padding=True, truncation=True, max_length=args.max_len,
                        return_tensors="pt")
            pred = model(**batch).logits.argmax(-1)
            correct += sum(int(p) == y for p, (_, y) in zip(pred.tolist(), chunk))
    print(f"GLUE dev accuracy {correct / len(dev):.4f} ({correct}/{len(dev)}), max_len {args.max_len}")
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)


if __name__ == "__main__":
    main()
