import math

import torch

from udi.eval.knn import knn_accuracy, knn_predict


def loop_knn(train, train_labels, test, k, num_classes, temperature):
    """The DINO formula, one test image at a time with plain Python."""
    preds = []
    for x in test:
        sims = []
        for y, label in zip(train, train_labels):
            cos = float((x @ y) / (x.norm() * y.norm()))
            sims.append((cos, int(label)))
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * num_classes
        for cos, label in sims[:k]:
            votes[label] += math.exp(cos / temperature)
        preds.append(max(range(num_classes), key=lambda c: votes[c]))
    return preds


def test_vote_matches_loop_implementation_on_random_data():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(60, 8, generator=g), torch.randn(25, 8, generator=g)
    labels = torch.randint(0, 4, (60,), generator=g)
    for k in (1, 5, 20):
        fast = knn_predict(train, labels, test, k, 4, 0.07, chunk_size=7).argmax(1).tolist()
        assert fast == loop_knn(train, labels, test, k, 4, 0.07)


def test_separable_clusters_are_perfect_and_k_is_capped():
    g = torch.Generator().manual_seed(1)
    centres = torch.eye(3) * 10
    train_labels = torch.arange(3).repeat_interleave(20)
    test_labels = torch.arange(3).repeat_interleave(5)
    train = centres[train_labels] + torch.randn(60, 3, generator=g)
    test = centres[test_labels] + torch.randn(15, 3, generator=g)
    result = knn_accuracy(train, train_labels, test, test_labels, ks=(10, 20, 100, 200))
    assert result == {"knn_top1_k10": 100.0, "knn_top1_k20": 100.0, "knn_top1_k60": result["knn_top1_k60"]}
    assert set(result) == {"knn_top1_k10", "knn_top1_k20", "knn_top1_k60"}
