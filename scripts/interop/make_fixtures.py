#!/usr/bin/env python3
"""Writes the import fixtures of tests/fixtures/interop/ (read by tests/tests/import.rs).

Tiny random PyTorch models in the layouts users bring to distill, saved the way users save them, with fixed
inputs and PyTorch's eval-mode outputs, so the Rust tests compare distill's forward pass against PyTorch's:

* ``resnet18-w2.{pth,safetensors}``: a torchvision ResNet-18 (module names exactly torchvision's) of base
  width 2 instead of 64, 10 classes; ``resnet50-w2.safetensors``: the same for ResNet-50 (Bottlenecks).
* ``resnet8.{pth,safetensors}``: mdistiller's CIFAR ``resnet8`` (widths 16/16-32-64, ``downsample.0/1``), 10 classes.
* ``mlp-seq.{pth,safetensors}``: ``nn.Sequential(Flatten, Linear(64, 32), ReLU, Linear(32, 16), ReLU,
  Linear(16, 10))`` (keys ``1.*``, ``3.*``, ``5.*``); ``mlp-seq-bf16.pth``: its bfloat16 copy;
  ``mlp-checkpoint.pth``: a training checkpoint ``{"epoch", "state_dict", "optimizer"}`` of the same MLP
  wrapped in ``nn.DataParallel`` (keys ``module.1.weight``, ...).
* ``tiny-bert-sst2/``: a Hugging Face ``BertForSequenceClassification`` (2 layers, hidden 32, 2 heads,
  intermediate 64, a 100-word vocabulary, 2 labels) as ``save_pretrained`` writes it (``config.json``,
  ``model.safetensors``), its uncased WordPiece tokenizer (``vocab.txt``, ``tokenizer.json``) plus ``pytorch_model.bin`` (``torch.save(model.state_dict())``);
  ``tiny-bert-sst2-f16.safetensors``: its float16 copy.
* MNIST-shaped MLPs (784-4-4-10), for recipes: ``mlp-mnist-seq.pth`` (``nn.Sequential``), and broken
  checkpoints of one with distill's names (``fc1``..``fc3``): ``mlp-missing.safetensors`` (no ``fc3.bias``),
  ``mlp-extra.pth`` (an extra ``fc4.weight``), ``mlp-shape.pth`` (a 9-class ``fc3``).
* ``reference.safetensors``: the inputs and PyTorch's outputs (float32, eval mode): ``image`` [2, 3, 32, 32]
  and ``resnet18-w2.logits``, ``resnet50-w2.logits``, ``resnet8.logits``; ``mlp.input`` [3, 1, 8, 8] and
  ``mlp.logits``; ``bert.input_ids`` [3, T] (padded with 0), ``bert.logits``, ``bert.pooler_output``,
  ``bert-f16.logits`` (the f16 weights run in f32); the sentences are in the metadata (``bert.sentences``).

Batch-norm running statistics, scales and shifts are randomised, so eval-mode batch norm is really tested.
Seeded; run from the repository root with torch and transformers installed (never by CI):

    python scripts/interop/make_fixtures.py
"""

import json
import os
import sys

import torch
from torch import nn
from safetensors.torch import save_file

OUT = os.path.join("tests", "fixtures", "interop")


# ---- torchvision's ResNet, module for module (torchvision/models/resnet.py), with a base width ----------


def conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def conv1x1(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * 4)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class TorchvisionResNet(nn.Module):
    def __init__(self, block, layers, num_classes, width=64):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---- mdistiller's CIFAR ResNet (mdistiller/models/cifar/resnet.py), without its feature outputs ---------


class CifarBasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        return torch.relu(out + residual)


class CifarResNet(nn.Module):
    def __init__(self, depth, num_filters, num_classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(3, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(num_filters[1], n)
        self.layer2 = self._make_layer(num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(num_filters[3], n, stride=2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(num_filters[3], num_classes)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [CifarBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [CifarBasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).view(x.size(0), -1))


class NamedMlp(nn.Module):
    """An MLP with distill's own names (fc1..fc3)."""

    def __init__(self, sizes):
        super().__init__()
        for i in range(len(sizes) - 1):
            setattr(self, f"fc{i + 1}", nn.Linear(sizes[i], sizes[i + 1]))
        self.n = len(sizes) - 1

    def forward(self, x):
        x = torch.flatten(x, 1)
        for i in range(1, self.n + 1):
            x = getattr(self, f"fc{i}")(x)
            if i < self.n:
                x = torch.relu(x)
        return x


def randomise_batch_norm(model, gen):
    """Running statistics, scales and shifts away from their (0, 1, 1, 0) initial values."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=gen) * 0.2)
            m.num_batches_tracked.fill_(17)


def state(model):
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def save_pth(sd, name):
    torch.save(sd, os.path.join(OUT, name))


def save_st(sd, name):
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(OUT, name))


@torch.no_grad()
def vision(ref, gen):
    image = torch.randn(2, 3, 32, 32, generator=gen)
    ref["image"] = image
    for name, model in [
        ("resnet18-w2", TorchvisionResNet(BasicBlock, [2, 2, 2, 2], 10, width=2)),
        ("resnet50-w2", TorchvisionResNet(Bottleneck, [3, 4, 6, 3], 10, width=2)),
        ("resnet8", CifarResNet(8, [16, 16, 32, 64], 10)),
    ]:
        randomise_batch_norm(model, gen)
        model.eval()
        ref[f"{name}.logits"] = model(image)
        sd = state(model)
        if name != "resnet50-w2":
            save_pth(sd, f"{name}.pth")
        save_st(sd, f"{name}.safetensors")
    # a width-64 copy of the module has torchvision's own keys and shapes, where torchvision is installed
    try:
        import torchvision

        ours = {k: tuple(v.shape) for k, v in TorchvisionResNet(BasicBlock, [2, 2, 2, 2], 1000).state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in torchvision.models.resnet18().state_dict().items()}
        assert ours == theirs, "the ResNet module differs from torchvision's"
    except ImportError:
        print("torchvision is not installed: its names were not compared", file=sys.stderr)


@torch.no_grad()
def mlps(ref, gen):
    x = torch.rand(3, 1, 8, 8, generator=gen)
    ref["mlp.input"] = x
    seq = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10)
    ).eval()
    ref["mlp.logits"] = seq(x)
    sd = state(seq)
    save_pth(sd, "mlp-seq.pth")
    save_st(sd, "mlp-seq.safetensors")
    save_pth({k: v.to(torch.bfloat16) for k, v in sd.items()}, "mlp-seq-bf16.pth")
    ref["mlp-bf16.logits"] = seq.to(torch.bfloat16).float()(x)
    seq.float()
    seq.load_state_dict(sd)
    wrapped = nn.DataParallel(seq)
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.1, momentum=0.9)
    with torch.enable_grad():
        wrapped(x).sum().backward()
    opt.step()
    ref["mlp-checkpoint.logits"] = wrapped.module(x)
    torch.save({"epoch": 7, "state_dict": state(wrapped), "optimizer": opt.state_dict()},
               os.path.join(OUT, "mlp-checkpoint.pth"))

    # MNIST-shaped (784 inputs, 10 classes), so a recipe on MNIST points at them: `distill check` / `run`
    mnist = nn.Sequential(nn.Flatten(), nn.Linear(784, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 10))
    save_pth(state(mnist), "mlp-mnist-seq.pth")
    named = NamedMlp([784, 4, 4, 10])
    sd = state(named)
    missing = {k: v for k, v in sd.items() if k != "fc3.bias"}
    save_st(missing, "mlp-missing.safetensors")
    save_pth({**sd, "fc4.weight": torch.randn(10, 10, generator=gen)}, "mlp-extra.pth")
    save_pth({**sd, "fc3.weight": sd["fc3.weight"][:9].clone(), "fc3.bias": sd["fc3.bias"][:9].clone()},
             "mlp-shape.pth")


WORDS = (
    "the a an and or but not no very so too quite really movie film story plot acting actor actress music "
    "scene scenes script director good great fine fun funny charming moving smart fresh bad awful dull boring "
    "weak flat long slow mess waste is was are were be it this that its of in on to with for as by than "
    "i you we they he she love loved hate hated like liked enjoy enjoyed best worst ever never always "
    "little much more most less least one two"
).split()


@torch.no_grad()
def bert(ref, gen):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification

    folder = os.path.join(OUT, "tiny-bert-sst2")
    os.makedirs(folder, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS)) + [",", ".", "!", "'"]
    with open(os.path.join(folder, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    # BERT's uncased WordPiece tokenizer over this vocabulary, as tokenizer.json (what distill reads)
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))],
    )
    tok.decoder = decoders.WordPiece()
    tok.save(os.path.join(folder, "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    cfg = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=40, type_vocab_size=2, num_labels=2,
    )
    torch.manual_seed(1)
    model = BertForSequenceClassification(cfg)
    # BERT's N(0, 0.02) initialisation leaves the logits near zero: larger weights make the check sharper
    for name, p in model.named_parameters():
        if "LayerNorm" in name:
            p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen) if name.endswith("weight")
                    else 0.1 * torch.randn(p.shape, generator=gen))
        elif name == "classifier.weight":
            p.copy_(torch.randn(p.shape, generator=gen) * 3.0 / p.shape[-1] ** 0.5)
        elif name.endswith("weight"):
            p.copy_(torch.randn(p.shape, generator=gen) * (0.5 / p.shape[-1] ** 0.5 if p.dim() == 2 else 1.0))
        else:
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    model.eval()
    sentences = [
        "A very charming and funny movie!",
        "the plot was a mess , and the acting was flat .",
        "it is not the worst film ever",
    ]
    batch = tok.encode_batch(sentences)
    enc = {
        "input_ids": torch.tensor([e.ids for e in batch]),
        "attention_mask": torch.tensor([e.attention_mask for e in batch]),
    }
    out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True)
    pooled = model.bert.pooler(out.hidden_states[-1])
    ref["bert.input_ids"] = enc["input_ids"].to(torch.int64)
    ref["bert.logits"] = out.logits
    ref["bert.pooler_output"] = pooled
    model.save_pretrained(folder)
    torch.save(state(model), os.path.join(folder, "pytorch_model.bin"))
    half = {k: v.half() if v.is_floating_point() else v for k, v in state(model).items()}
    save_st(half, "tiny-bert-sst2-f16.safetensors")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in half.items()})
    ref["bert-f16.logits"] = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    return sentences


def main():
    os.makedirs(OUT, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    ref = {}
    vision(ref, gen)
    mlps(ref, gen)
    sentences = bert(ref, gen)
    save_file(
        {k: v.detach().contiguous() for k, v in ref.items()},
        os.path.join(OUT, "reference.safetensors"),
        metadata={"bert.sentences": json.dumps(sentences), "torch": torch.__version__},
    )
    for k, v in sorted(ref.items()):
        print(f"{k:28s} {list(v.shape)}  max |x| {v.abs().max().item():.3f}")
    total = 0
    for root, _, files in os.walk(OUT):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    print(f"{OUT}: {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
