"""Weighted k-NN classification, DINO protocol (docs/methods.md section 6).

Cosine similarity of L2-normalised features; each of the k nearest training images votes
for its label with weight ``exp(sim / T)`` (T = 0.07); the class with most weight wins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    k: int,
    num_classes: int,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Class scores (M, C) of the test rows; features (N, D) / (M, D) need not be normalised.

    Per chunk of m test rows the votes are scatter-added into an (m, C) table, so memory
    stays at the (m, N) similarities plus (m, k) neighbours whatever C (no (m, k, C) one-hot).
    """
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    labels = train_labels.to(train.device, torch.long)
    k = min(k, len(train))
    scores = []
    for start in range(0, len(test), chunk_size):
        sim, idx = (test[start : start + chunk_size] @ train.T).topk(k, dim=1)  # (m, k)
        votes = sim.new_zeros(len(sim), num_classes)
        scores.append(votes.scatter_add_(1, labels[idx], (sim / temperature).exp()))  # (m, C)
    return torch.cat(scores)


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    ks=(10, 20, 100, 200),
    temperature: float = 0.07,
) -> dict[str, float]:
    """Top-1 accuracy (in %) for each k, capped by the number of training images:
    ``{"knn_top1_k20": 87.5, ...}`` (a capped k is reported under its capped value)."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    results = {}
    for k in sorted({min(k, len(train_features)) for k in ks}):
        scores = knn_predict(train_features, train_labels, test_features, k, num_classes, temperature)
        results[f"knn_top1_k{k}"] = 100.0 * (scores.argmax(dim=1) == test_labels).float().mean().item()
    return results
