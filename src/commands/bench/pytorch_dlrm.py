"""adrank's DLRM trained by PyTorch on the rows adrank trains on, for `adrank bench train --pytorch`.

The same architecture (embedding tables of the spec's cardinalities with a wide column, a bottom
MLP with ReLU on its output, every pairwise dot product, a top MLP to one logit plus the wide
weights), the same batch size, Adam on the dense tensors and Adagrad on the embedding rows (sparse
gradients), the same learning rates and thread count, one epoch over the rows in a random order.
The rows are read into memory before the clock starts. Prints one JSON object.
"""

import json
import sys
import time

import numpy as np
import torch
from torch import nn


def mlp(sizes, relu_last):
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i + 2 < len(sizes) or relu_last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Dlrm(nn.Module):
    def __init__(self, meta):
        super().__init__()
        self.dim, self.wide = meta["embedding_dim"], meta["wide"]
        width = self.dim + int(self.wide)
        self.tables = nn.ModuleList(nn.Embedding(c, width, sparse=True) for c in meta["cardinalities"])
        for table, c in zip(self.tables, meta["cardinalities"]):
            nn.init.uniform_(table.weight, -1 / c**0.5, 1 / c**0.5)
            if self.wide:
                with torch.no_grad():
                    table.weight[:, self.dim] = 0
        self.bottom = mlp([meta["dense_width"], *meta["bottom"], self.dim], relu_last=True)
        k = len(meta["cardinalities"]) + 1
        self.pairs = torch.triu_indices(k, k, 1)
        self.top = mlp([self.dim + k * (k - 1) // 2, *meta["top"], 1], relu_last=False)

    def forward(self, ids, dense):
        bottom = self.bottom(dense)
        rows = [table(ids[:, i]) for i, table in enumerate(self.tables)]
        vectors = torch.stack([bottom, *(r[:, : self.dim] for r in rows)], dim=1)
        dots = torch.bmm(vectors, vectors.transpose(1, 2))[:, self.pairs[0], self.pairs[1]]
        logit = self.top(torch.cat([bottom, dots], dim=1)).squeeze(1)
        if self.wide:
            logit = logit + torch.stack([r[:, self.dim] for r in rows], dim=1).sum(dim=1)
        return logit


def main(meta_path, prefix):
    meta = json.load(open(meta_path))
    torch.set_num_threads(meta["threads"])
    torch.manual_seed(meta["seed"])
    n, f, d = meta["rows"], len(meta["cardinalities"]), meta["dense_width"]
    ids = torch.from_numpy(np.fromfile(prefix + ".ids", dtype="<i8").reshape(n, f))
    dense = torch.from_numpy(np.fromfile(prefix + ".dense", dtype="<f4").reshape(n, d))
    labels = torch.from_numpy(np.fromfile(prefix + ".labels", dtype="<f4"))
    model = Dlrm(meta)
    dense_params = [p for name, p in model.named_parameters() if not name.startswith("tables.")]
    adam = torch.optim.Adam(dense_params, lr=meta["learning_rate"])
    adagrad = torch.optim.Adagrad(model.tables.parameters(), lr=meta["embedding_learning_rate"])
    loss_fn = nn.BCEWithLogitsLoss()
    order = torch.randperm(n)
    batch = meta["batch_size"]
    total = 0.0
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, n, batch):
        index = order[start : start + batch]
        adam.zero_grad(set_to_none=True)
        adagrad.zero_grad(set_to_none=True)
        loss = loss_fn(model(ids[index], dense[index]), labels[index])
        loss.backward()
        adam.step()
        adagrad.step()
        total += loss.item() * len(index)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "examples": n,
        "seconds": wall,
        "cpu_seconds": cpu,
        "examples_per_second": n / wall,
        "mean_train_loss": total / n,
    }))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
