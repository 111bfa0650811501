"""Train a DLRM in PyTorch on `adrank features export` output and export it to ONNX with
PyTorch's default exporter, ready for `adrank registry import`.

    adrank features export --out data
    python train_dlrm.py data model.onnx
    adrank registry import ctr model.onnx --stats data/stats.json --alias production

Needs torch, numpy, pyarrow, onnx and onnxscript (pip install torch numpy pyarrow onnx
onnxscript). The model reads adrank's signature: `ids` int64 [batch, id features] and `dense`
float32 [batch, dense features], in the column order the export's metadata names; it answers
`pctr` float32 [batch, 1]. Each id feature gets its own embedding table, sized by the
cardinality the export records (not by the largest id seen in the data: serving sees ids the
window did not, and adrank refuses a model that cannot take them).
"""

import argparse
import copy
import pathlib
import time

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn


def load(folder):
    """The rows, labels and the metadata's column names and cardinalities."""
    table = pq.read_table(pathlib.Path(folder) / "rows.parquet")
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    id_names = meta["adrank.ids"].split(",")
    cardinalities = [int(c) for c in meta["adrank.id_cardinalities"].split(",")]
    dense_names = [n for n in meta["adrank.dense"].split(",") if n]
    ids = np.stack([table[n].to_numpy() for n in id_names], axis=1).astype(np.int64)
    dense = np.stack([table[n].to_numpy() for n in dense_names], axis=1).astype(np.float32)
    labels = table["label"].to_numpy().astype(np.float32)
    times = table["event_time_ms"].to_numpy()
    return ids, dense, labels, times, cardinalities


def mlp(sizes, relu_last):
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i + 2 < len(sizes) or relu_last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Dlrm(nn.Module):
    """Embeddings per id feature, a bottom MLP over the numbers, their pairwise dot products,
    and a top MLP to the click probability (Naumov et al., 2019)."""

    def __init__(self, cardinalities, dense_width, dim=16, bottom=(64,), top=(128, 64)):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(c, dim) for c in cardinalities)
        for table in self.tables:
            nn.init.normal_(table.weight, std=0.05)
        self.bottom = mlp([dense_width, *bottom, dim], relu_last=True)
        vectors = len(cardinalities) + 1
        self.register_buffer("pairs", torch.triu_indices(vectors, vectors, offset=1), persistent=False)
        self.top = mlp([dim + self.pairs.shape[1], *top, 1], relu_last=False)

    def forward(self, ids, dense):
        embedded = [table(ids[:, i]) for i, table in enumerate(self.tables)]
        vectors = torch.stack([self.bottom(dense), *embedded], dim=1)
        gram = torch.bmm(vectors, vectors.transpose(1, 2))
        dots = gram[:, self.pairs[0], self.pairs[1]]
        logit = self.top(torch.cat([vectors[:, 0], dots], dim=1))
        return torch.sigmoid(logit)


def auc(labels, scores):
    """Area under the ROC curve: the chance a clicked row outscores an unclicked one, ties half."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]
    positives = labels.sum()
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    return (ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="the folder `adrank features export --out` wrote")
    parser.add_argument("model", help="the ONNX file to write (its weights go beside it, as model.onnx.data)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--validation", type=float, default=0.1, help="the newest share of rows held out")
    args = parser.parse_args()
    torch.manual_seed(1)
    torch.set_num_threads(1)

    ids, dense, labels, times, cardinalities = load(args.data)
    order = np.argsort(times, kind="stable")
    split = int(len(order) * (1 - args.validation))
    train, held_out = order[:split], order[split:]
    model = Dlrm(cardinalities, dense.shape[1])
    # Start at the base rate: the first batches then learn who clicks, not how often.
    rate = labels[train].mean().clip(1e-4, 1 - 1e-4)
    model.top[-1].bias.data.fill_(float(np.log(rate / (1 - rate))))
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.BCELoss()
    t_ids, t_dense, t_labels = torch.from_numpy(ids), torch.from_numpy(dense), torch.from_numpy(labels)
    started = time.time()
    best = None
    for epoch in range(1, args.epochs + 1):
        shuffled = train[np.random.default_rng(epoch).permutation(len(train))]
        total = 0.0
        for start in range(0, len(shuffled), args.batch):
            batch = torch.from_numpy(shuffled[start : start + args.batch])
            optimiser.zero_grad()
            loss = loss_fn(model(t_ids[batch], t_dense[batch]).squeeze(1), t_labels[batch])
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        with torch.no_grad():
            scores = model(t_ids[held_out], t_dense[held_out]).squeeze(1).numpy()
        held_out_auc = auc(labels[held_out], scores)
        print(
            f"epoch {epoch}: train log loss {total / len(train):.4f}, held-out AUC "
            f"{held_out_auc:.4f} ({len(train)} rows, {time.time() - started:.0f} s)"
        )
        # Keep the epoch that did best on the held-out rows: big id tables overfit a small window.
        if best is None or held_out_auc > best[0]:
            best = (held_out_auc, epoch, copy.deepcopy(model.state_dict()))

    model.load_state_dict(best[2])
    print(f"exporting epoch {best[1]} (held-out AUC {best[0]:.4f})")
    model.eval()
    example = (t_ids[:2], t_dense[:2])
    batch = torch.export.Dim("batch")
    torch.onnx.export(
        model,
        example,
        args.model,
        input_names=["ids", "dense"],
        output_names=["pctr"],
        dynamic_shapes={"ids": {0: batch}, "dense": {0: batch}},
    )
    print(f"wrote {args.model}")


if __name__ == "__main__":
    main()
