"""Accuracy by review length of classification runs on their (shared) seeded test sample,
through ``torchformer.load(run).predict()`` (docs/results.md, issue 13).

    TORCHFORMER_DATA=../shared/data .venv/bin/python docs/scripts/longdoc_length_buckets.py \\
        runs/longdoc-demo-headtail runs/longdoc-demo-chunks runs/longdoc-demo-sliding
"""

import sys

import torchformer
from torchformer.config import load_config
from torchformer.tasks.classify import ClassifyConfig
from torchformer.tasks.classify_data import load_splits

BUCKETS = {
    "all": lambda n: True,
    "<=256": lambda n: n <= 256,
    ">256": lambda n: n > 256,
    ">512": lambda n: n > 512,
}


def main(runs: list[str]) -> None:
    config = load_config(ClassifyConfig, f"{runs[0]}/config.yaml")
    test = load_splits(config.data, seed=config.train.seed).test
    texts, labels = [r.text for r in test], [str(r.label) for r in test]
    for run in runs:
        clf = torchformer.load(run)
        # Lengths in the model's tokens of the cleaned text, special tokens included.
        lengths = [len(x) for x in clf.tokenizer.encode_batch(clf.clean(texts), max_length=None)]
        predicted = []
        for i in range(0, len(texts), 32):
            predicted += [p["label"] for p in clf.predict(texts[i : i + 32])]
        right = [p == y for p, y in zip(predicted, labels)]
        row = {}
        for name, keep in BUCKETS.items():
            chosen = [ok for ok, n in zip(right, lengths) if keep(n)]
            row[name] = (round(100 * sum(chosen) / max(len(chosen), 1), 2), len(chosen))
        print(run, row, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
