"""Makes the end-to-end interop fixture: a tiny synthetic sentiment data set and a tiny HF
`BertForSequenceClassification` fine-tuned on it, with its tokenizer, as a user's own fine-tuned teacher.

Writes tests/fixtures/interop/e2e/{data/train.tsv, data/test.tsv, tiny-bert-clf/*}. Never run by CI (the
files are committed); rerun by hand with the repo's Python venv:

    python scripts/interop/make_e2e_fixture.py

Needs torch and transformers (pip). Everything is seeded: rerunning gives the same data and, on the same
torch version, the same weights.
"""

import json
import os
import random

import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "interop", "e2e")
POS = ["good", "great", "excellent", "lovely", "superb", "wonderful", "fun", "moving"]
NEG = ["bad", "awful", "terrible", "poor", "boring", "dull", "horrible", "weak"]
FILL = ["the", "movie", "film", "was", "is", "a", "plot", "acting", "story", "very", "quite", "really",
        "and", "but", "with", "cast", "music", "ending"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def sentence(rng):
    """A sentence whose label is the majority of its sentiment words (ties are drawn again)."""
    while True:
        n_pos, n_neg = rng.randint(0, 3), rng.randint(0, 3)
        if n_pos != n_neg:
            break
    words = [rng.choice(POS) for _ in range(n_pos)] + [rng.choice(NEG) for _ in range(n_neg)]
    words += [rng.choice(FILL) for _ in range(rng.randint(2, 6))]
    rng.shuffle(words)
    return " ".join(words), int(n_pos > n_neg)


def write_tsv(path, rows):
    with open(path, "w") as f:
        f.write("sentence\tlabel\n")
        for s, y in rows:
            f.write(f"{s}\t{y}\n")


def main():
    rng = random.Random(21)
    torch.manual_seed(21)
    data = os.path.join(ROOT, "data")
    model_dir = os.path.join(ROOT, "tiny-bert-clf")
    os.makedirs(data, exist_ok=True)
    os.makedirs(model_dir, exist_ok=True)
    train = [sentence(rng) for _ in range(400)]
    test = [sentence(rng) for _ in range(64)]
    write_tsv(os.path.join(data, "train.tsv"), train)
    write_tsv(os.path.join(data, "test.tsv"), test)

    vocab = SPECIAL + sorted(set(POS + NEG + FILL))
    with open(os.path.join(model_dir, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tok.save_pretrained(model_dir)

    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2,
                     id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    model = BertForSequenceClassification(cfg)
    # "fine-tuning": a few epochs of AdamW on the training sentences
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for epoch in range(40):
        rng.shuffle(train)
        for i in range(0, len(train), 32):
            batch = train[i:i + 32]
            enc = tok([s for s, _ in batch], padding=True, truncation=True, max_length=32, return_tensors="pt")
            out = model(**enc, labels=torch.tensor([y for _, y in batch]))
            opt.zero_grad()
            out.loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        enc = tok([s for s, _ in test], padding=True, truncation=True, max_length=32, return_tensors="pt")
        pred = model(**enc).logits.argmax(-1)
    acc = (pred == torch.tensor([y for _, y in test])).float().mean().item()
    model.save_pretrained(model_dir, safe_serialization=True)
    assert tok("good film")["input_ids"] == [2, vocab.index("good"), vocab.index("film"), 3]
    with open(os.path.join(model_dir, "fixture.json"), "w") as f:
        json.dump({"test_accuracy": acc, "torch": torch.__version__}, f, indent=2)
    print(f"wrote {ROOT}: teacher test accuracy {acc:.3f}")


if __name__ == "__main__":
    main()
