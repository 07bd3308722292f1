#!/usr/bin/env python3
"""PyTorch reference for distill's speed workloads (issue: training throughput on CPU).

The same workloads as `distill bench --speed` (crates/distill-cli/src/speed.rs), written plainly in PyTorch so
that both sides do the same arithmetic on the same data:

  mlp_ce   one epoch of MNIST (60,000 images, batch 128, shuffled), MLP 784-1200-1200-10 with ReLU, AdamW
           (lr 1e-3, weight decay 0.01), cross-entropy.
  mlp_kd   one distillation epoch: a frozen 784-1200-1200-10 teacher (eval mode, no gradients), a 784-800-800-10
           student, loss 0.9 * T^2 * KL(softmax(t/T) || softmax(s/T)) + 0.1 * CE at T = 4, AdamW.
  cnn_step training steps of a small CNN at batch 128: conv 1->32 3x3, ReLU, max-pool 2, conv 32->64 3x3, ReLU,
           max-pool 2, linear 1600->128, ReLU, linear 128->10, cross-entropy, SGD (momentum 0.9).
  gcn      full-batch epochs of a 2-layer GCN on Cora (1433-16-7, dropout 0.5, Adam lr 0.01, L2 5e-4 on the first
           layer), the normalised adjacency as a sparse matrix.
  bert_step training steps at batch 32 x 64 tokens of a MiniLM-L6-shaped BERT (transformers' BertModel from
           $DISTILL_MODELS/all-MiniLM-L6-v2/config.json, randomly initialised), mean pooling, dropout 0.1, a
           2-way linear classifier, AdamW (lr 5e-5, weight decay 0.01), cross-entropy. Needs transformers.
  bert_kd  distillation steps at the same batch: that BERT frozen (eval, no gradients), a 3-layer student, loss
           0.9 * T^2 * KL + 0.1 * CE at T = 4, AdamW.
  dscnn_step training steps at batch 64 of the audio plugin's DS-CNN student (width 32, 4 blocks): conv 1->32
           3x3 stride 2 + BN + ReLU, 4 x (depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU), global average
           pooling, linear 32->10; on [1, 40, 32] Gaussian inputs, AdamW (lr 5e-3, weight decay 5e-4),
           cross-entropy.

One workload per process, so the peak resident memory (ru_maxrss) is that workload's. Prints one JSON line:
{"workload", "impl": "pytorch", "samples", "seconds", "samples_per_s", "peak_rss_mib", "threads", "version"}.
The timed part excludes loading and one warm-up step (epochs: the first 5 batches are a warm-up outside the
timed epoch).

Usage: DISTILL_DATA=../shared/datasets python3 bench/pytorch/speed.py WORKLOAD [--threads N] [--steps N]
Needs `pip install torch` (never a dependency of the project or its tests).
"""
import argparse
import gzip
import json
import os
import resource
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def data_dir():
    d = os.environ.get("DISTILL_DATA")
    if not d:
        sys.exit("set DISTILL_DATA to the data dir (the one holding mnist/ and cora/)")
    return d


def read_idx(path):
    with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
        raw = f.read()
    magic = struct.unpack(">I", raw[:4])[0]
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return torch.frombuffer(bytearray(raw[4 + 4 * ndim :]), dtype=torch.uint8).reshape(dims)


def mnist_train():
    d = os.path.join(data_dir(), "mnist")
    x = read_idx(os.path.join(d, "train-images-idx3-ubyte.gz")).float().div_(255.0)
    y = read_idx(os.path.join(d, "train-labels-idx1-ubyte.gz")).long()
    return x, y


def mlp(sizes):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def batches(n, bs, gen):
    perm = torch.randperm(n, generator=gen)
    return [perm[i : i + bs] for i in range(0, n, bs)]


def timed_epoch(n, step, gen):
    """Five warm-up batches, then one timed epoch of shuffled batches of 128: (samples, seconds)."""
    for idx in batches(n, 128, gen)[:5]:
        step(idx)
    order = batches(n, 128, gen)
    t0 = time.perf_counter()
    for idx in order:
        step(idx)
    return n, time.perf_counter() - t0


def mlp_ce(args):
    x, y = mnist_train()
    x = x.reshape(-1, 784)
    model = mlp([784, 1200, 1200, 10])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)

    def step(idx):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()

    return timed_epoch(x.shape[0], step, gen)


def mlp_kd(args):
    x, y = mnist_train()
    x = x.reshape(-1, 784)
    teacher = mlp([784, 1200, 1200, 10]).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = mlp([784, 800, 800, 10])
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    t = 4.0

    def step(idx):
        xb = x[idx]
        with torch.no_grad():
            tl = teacher(xb)
        opt.zero_grad(set_to_none=True)
        sl = student(xb)
        kd = F.kl_div(F.log_softmax(sl / t, 1), F.softmax(tl / t, 1), reduction="batchmean") * t * t
        loss = 0.9 * kd + 0.1 * F.cross_entropy(sl, y[idx])
        loss.backward()
        opt.step()

    return timed_epoch(x.shape[0], step, gen)


class SmallCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.fc1 = nn.Linear(1600, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def cnn_step(args):
    x, y = mnist_train()
    x = x.reshape(-1, 1, 28, 28)
    model = SmallCnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    order = batches(x.shape[0], 128, gen)

    def step(idx):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()

    for idx in order[:3]:
        step(idx)
    steps = args.steps or 50
    t0 = time.perf_counter()
    for idx in order[3 : 3 + steps]:
        step(idx)
    return steps * 128, time.perf_counter() - t0


def cora():
    d = os.path.join(data_dir(), "cora")
    ids, feats, labels = {}, [], []
    classes = {}
    with open(os.path.join(d, "nodes.tsv")) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if parts[0] == "node_id":
                continue
            ids[parts[0]] = len(ids)
            labels.append(classes.setdefault(parts[1], len(classes)))
            feats.append([int(i) for i in parts[2].split(",")] if len(parts) > 2 and parts[2] else [])
    n = len(ids)
    nf = 1 + max((max(f) for f in feats if f), default=0)
    x = torch.zeros(n, nf)
    for i, f in enumerate(feats):
        if f:
            x[i, f] = 1.0
    x = x / x.sum(1, keepdim=True).clamp(min=1.0)
    src, dst = [], []
    with open(os.path.join(d, "edges.tsv")) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 2 or parts[0] not in ids or parts[1] not in ids or parts[0] == parts[1]:
                continue
            a, b = ids[parts[0]], ids[parts[1]]
            src += [a, b]
            dst += [b, a]
    idx = torch.tensor([src + list(range(n)), dst + list(range(n))])
    a = torch.sparse_coo_tensor(idx, torch.ones(idx.shape[1]), (n, n)).coalesce()
    a = torch.sparse_coo_tensor(a.indices(), torch.ones_like(a.values()), (n, n)).coalesce()
    deg = torch.sparse.sum(a, 1).to_dense()
    dinv = deg.pow(-0.5)
    i = a.indices()
    vals = dinv[i[0]] * dinv[i[1]]
    adj = torch.sparse_coo_tensor(i, vals, (n, n)).coalesce()
    train = []
    with open(os.path.join(d, "split_train.txt")) as f:
        train = [ids[t.strip()] for t in f if t.strip() in ids]
    return x, torch.tensor(labels), adj, torch.tensor(train), len(classes)


def gcn(args):
    x, y, adj, train, k = cora()
    w1 = nn.Linear(x.shape[1], 16)
    w2 = nn.Linear(16, k)
    opt = torch.optim.Adam(
        [{"params": w1.parameters(), "weight_decay": 5e-4}, {"params": w2.parameters(), "weight_decay": 0.0}],
        lr=0.01,
    )

    def step():
        opt.zero_grad(set_to_none=True)
        h = F.dropout(x, 0.5, True)
        h = F.relu(torch.sparse.mm(adj, w1(h)))
        h = F.dropout(h, 0.5, True)
        out = torch.sparse.mm(adj, w2(h))
        loss = F.cross_entropy(out[train], y[train])
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    epochs = args.steps or 200
    t0 = time.perf_counter()
    for _ in range(epochs):
        step()
    return epochs * x.shape[0], time.perf_counter() - t0


def timed_steps(step, steps, warm, batch):
    """`warm` untimed calls of step(i) (i past the timed ones), then `steps` timed ones: (samples, seconds)."""
    for i in range(warm):
        step(steps + i)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    return steps * batch, time.perf_counter() - t0


def conv_bn(cin, cout, k, stride=1, groups=1):
    return [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    ]


def ds_cnn(width=32, blocks=4, classes=10):
    layers = conv_bn(1, width, 3, stride=2)
    for _ in range(blocks):
        layers += conv_bn(width, width, 3, groups=width) + conv_bn(width, width, 1)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes)]
    return nn.Sequential(*layers)


def dscnn_step(args):
    model = ds_cnn()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=5e-4)
    inputs = [torch.randn(64, 1, 40, 32) for _ in range(8)]
    y = torch.arange(64) % 10

    def step(i):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(inputs[i % 8]), y)
        loss.backward()
        opt.step()

    return timed_steps(step, args.steps or 50, 3, 64)


def models_dir():
    return os.environ.get("DISTILL_MODELS", "models")


class BertClassifier(nn.Module):
    def __init__(self, layers):
        super().__init__()
        try:
            from transformers import BertConfig, BertModel
        except ImportError:
            sys.exit("bert_step and bert_kd need transformers on PyTorch's side: pip install transformers")

        cfg = BertConfig.from_json_file(os.path.join(models_dir(), "all-MiniLM-L6-v2", "config.json"))
        cfg.num_hidden_layers = layers
        self.bert = BertModel(cfg, add_pooling_layer=False)
        self.drop = nn.Dropout(cfg.hidden_dropout_prob)
        self.classifier = nn.Linear(cfg.hidden_size, 2)

    def forward(self, ids):
        mask = (ids != 0).float()
        h = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return self.classifier(self.drop(pooled))


def bert_inputs(b=32, t=64):
    inputs = []
    for j in range(4):
        i = torch.arange(b * t, dtype=torch.int64) + j * b * t
        inputs.append((1000 + (i * 7919) % 20000).reshape(b, t))
    return inputs, torch.arange(b) % 2


def bert_run(args, kd):
    torch.manual_seed(0)
    teacher = BertClassifier(6).eval() if kd else None
    student = BertClassifier(3 if kd else 6)
    opt = torch.optim.AdamW(student.parameters(), lr=5e-5, weight_decay=0.01)
    inputs, y = bert_inputs()
    T = 4.0

    def step(i):
        x = inputs[i % len(inputs)]
        opt.zero_grad(set_to_none=True)
        s = student(x)
        loss = F.cross_entropy(s, y)
        if teacher is not None:
            with torch.no_grad():
                t = teacher(x)
            kl = F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean") * T * T
            loss = 0.9 * kl + 0.1 * loss
        loss.backward()
        opt.step()

    return timed_steps(step, args.steps or 20, 2, 32)


def bert_step(args):
    return bert_run(args, False)


def bert_kd(args):
    return bert_run(args, True)


WORKLOADS = {
    "mlp_ce": mlp_ce,
    "mlp_kd": mlp_kd,
    "cnn_step": cnn_step,
    "gcn": gcn,
    "dscnn_step": dscnn_step,
    "bert_step": bert_step,
    "bert_kd": bert_kd,
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workload", choices=sorted(WORKLOADS))
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--steps", type=int, default=0, help="steps (cnn_step) or epochs (gcn); 0: the default")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    samples, seconds = WORKLOADS[args.workload](args)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(
        json.dumps(
            {
                "workload": args.workload,
                "impl": "pytorch",
                "samples": samples,
                "seconds": seconds,
                "samples_per_s": samples / seconds,
                "peak_rss_mib": rss,
                "threads": torch.get_num_threads(),
                "version": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
