"""Why batch-1 latency differed between ``torchformer bench`` and direct probes (issue 17).

    TORCHFORMER_DATA=... python docs/scripts/b1_latency_probe.py runs/imdb-demo-len256 --texts 100

Times our PyTorch model and ``transformers`` on the same single texts (batch 1, no
padding), p50 in ms, in four settings:

- ``one process``: both models in this process, alternating text by text;
- ``two processes``: each model in its own spawned process, called in turn through a
  pipe (what the deployment bench does), default OpenMP settings;
- ``two processes, passive OpenMP``: the same with ``OMP_WAIT_POLICY=PASSIVE`` in the
  children (OpenMP threads sleep at once after a parallel region instead of spinning);
- ``ours, mask always``: one process, our encoder made to build the attention mask even
  when nothing is padded (the behaviour before commit 61254a7; batch 1 is never padded).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from pathlib import Path


def _load(kind: str, model_dir: str, threads: int):
    import torch

    torch.set_num_threads(threads)
    if kind == "transformers":
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    else:
        import torchformer

        model = torchformer.load(model_dir).model.eval()

    def forward(ids, mask):
        with torch.inference_mode():
            return model(input_ids=torch.from_numpy(ids), attention_mask=mask).logits

    return forward


def _child(conn, kind: str, model_dir: str, threads: int, env: dict[str, str]) -> None:
    os.environ.update(env)  # before torch is imported in this process
    import torch

    forward = _load(kind, model_dir, threads)
    singles = conn.recv()
    for ids in singles[:5]:
        forward(ids, torch.ones(ids.shape, dtype=torch.long))
    conn.send("ready")
    while True:
        i = conn.recv()
        if i is None:
            return
        ids = singles[i]
        mask = torch.ones(ids.shape, dtype=torch.long)
        t0 = time.perf_counter()
        forward(ids, mask)
        conn.send(time.perf_counter() - t0)


def _two_processes(model_dir: str, singles, threads: int, env: dict[str, str]) -> dict:
    ctx = multiprocessing.get_context("spawn")
    conns = {}
    for kind in ("torchformer", "transformers"):
        parent, child = ctx.Pipe()
        ctx.Process(target=_child, args=(child, kind, model_dir, threads, env), daemon=True).start()
        parent.send(singles)
        conns[kind] = parent
    for c in conns.values():
        assert c.recv() == "ready"
    times = {k: [] for k in conns}
    for i in range(len(singles)):
        order = list(conns) if i % 2 == 0 else list(reversed(conns))
        for k in order:
            conns[k].send(i)
            times[k].append(conns[k].recv())
    for c in conns.values():
        c.send(None)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="run or model directory (its best/ is used)")
    parser.add_argument("--texts", type=int, default=100)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    import torch

    import torchformer
    from torchformer.bench.deploy import BenchSettings, bench_texts, model_dir_of

    model_dir = str(model_dir_of(args.model))
    clf = torchformer.load(model_dir)
    texts, _, source = bench_texts(BenchSettings(n_texts=args.texts))
    singles = []
    for t in texts:
        ids, mask = clf.encode([t])  # (1, T), no padding
        singles.append(ids.numpy())
    lengths = [s.shape[1] for s in singles]
    print(
        f"{len(singles)} texts ({source}); mean {statistics.mean(lengths):.0f} tokens; "
        f"{args.threads} threads"
    )

    ours, theirs = (
        _load("torchformer", model_dir, args.threads),
        _load("transformers", model_dir, args.threads),
    )
    for ids in singles[:5]:
        ours(ids, torch.ones(ids.shape, dtype=torch.long))
        theirs(ids, torch.ones(ids.shape, dtype=torch.long))
    import torchformer.models.encoder as encoder
    from torchformer.nn.masks import padding_mask, padding_mask_if_padded

    def always(attention_mask):
        return None if attention_mask is None else padding_mask(attention_mask)

    times = {"torchformer": [], "transformers": [], "torchformer, mask always": []}
    for i, ids in enumerate(singles):
        calls = [
            ("torchformer", ours),
            ("transformers", theirs),
            ("torchformer, mask always", ours),
        ]
        for name, fn in calls if i % 2 == 0 else reversed(calls):
            encoder.padding_mask_if_padded = always if "always" in name else padding_mask_if_padded
            mask = torch.ones(ids.shape, dtype=torch.long)
            t0 = time.perf_counter()
            fn(ids, mask)
            times[name].append(time.perf_counter() - t0)
    encoder.padding_mask_if_padded = padding_mask_if_padded
    one = {k: 1000 * statistics.median(v) for k, v in times.items()}
    del ours, theirs
    rows = [
        ("one process", one),
        ("two processes", _two_processes(model_dir, singles, args.threads, {})),
        (
            "two processes, passive OpenMP",
            _two_processes(model_dir, singles, args.threads, {"OMP_WAIT_POLICY": "PASSIVE"}),
        ),
    ]
    print(
        "| setting | torchformer p50 ms | transformers p50 ms | ours ÷ theirs | ours, mask always |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, r in rows:
        no_mask = f"{r['torchformer, mask always']:.1f}" if "torchformer, mask always" in r else "—"
        print(
            f"| {name} | {r['torchformer']:.1f} | {r['transformers']:.1f} | "
            f"{r['torchformer'] / r['transformers']:.2f} | {no_mask} |"
        )


if __name__ == "__main__":
    main()
