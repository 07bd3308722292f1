#!/usr/bin/env python3
"""Trains LeNet-5 on MNIST in plain PyTorch, written as users write it (an nn.Sequential), and saves its
state dict: the PyTorch teacher that plugins/vision/recipes/mnist-torch-teacher.toml distils without
training a teacher. Prints the test accuracy and error count `distill run` must then report for the teacher.
Never run by CI.

    python scripts/interop/train_mnist_teacher.py --data $DISTILL_DATA/mnist \\
        --out $DISTILL_MODELS/torch-mnist/lenet5.pth --epochs 2
"""

import argparse
import gzip
import os

import numpy as np
import torch
from torch import nn


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def images(path):
    # distill's MNIST normalisation: pixels in [0, 1], then (x - 0.1307) / 0.3081
    x = torch.from_numpy(idx(path).astype(np.float32) / 255.0).unsqueeze(1)
    return (x - 0.1307) / 0.3081


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="folder with the four MNIST .gz files")
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    xtr, ytr = images(os.path.join(args.data, "train-images-idx3-ubyte.gz")), torch.from_numpy(
        idx(os.path.join(args.data, "train-labels-idx1-ubyte.gz")).astype(np.int64))
    xte, yte = images(os.path.join(args.data, "t10k-images-idx3-ubyte.gz")), torch.from_numpy(
        idx(os.path.join(args.data, "t10k-labels-idx1-ubyte.gz")).astype(np.int64))
    model = nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 128):
            b = perm[i:i + 128]
            loss = nn.functional.cross_entropy(model(xtr[b]), ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"epoch {epoch}: last loss {loss.item():.4f}", flush=True)
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(xte[i:i + 1000]).argmax(1) for i in range(0, len(xte), 1000)])
    correct = int((pred == yte).sum())
    print(f"test accuracy {correct / len(yte):.4f} ({len(yte) - correct} errors)")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.save(model.state_dict(), args.out)


if __name__ == "__main__":
    main()
