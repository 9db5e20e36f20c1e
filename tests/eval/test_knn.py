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


def one_hot_knn(train, train_labels, test, k, num_classes, temperature):
    """The former formula: an (M, k, C) one-hot of the neighbours' labels times their weights."""
    train, test = torch.nn.functional.normalize(train, dim=1), torch.nn.functional.normalize(test, dim=1)
    sim, idx = (test @ train.T).topk(k, dim=1)
    votes = torch.nn.functional.one_hot(train_labels[idx], num_classes).float()
    return (votes * (sim / temperature).exp().unsqueeze(-1)).sum(dim=1)


def test_scores_equal_the_one_hot_formula_on_random_data():
    g = torch.Generator().manual_seed(2)
    train, test = torch.randn(300, 16, generator=g), torch.randn(70, 16, generator=g)
    labels = torch.randint(0, 37, (300,), generator=g)
    for k in (1, 20, 200):
        got = knn_predict(train, labels, test, k, 37, 0.07, chunk_size=16)
        torch.testing.assert_close(got, one_hot_knn(train, labels, test, k, 37, 0.07), rtol=1e-6, atol=0)


def test_scores_hand_computed():
    # Train rows at angles 0, 60, 90 and 180 degrees; the test row at 0 degrees; k = 3, T = 0.5.
    train = torch.tensor([[1.0, 0.0], [0.5, 3**0.5 / 2], [0.0, 2.0], [-1.0, 0.0]])
    labels = torch.tensor([2, 0, 2, 1], dtype=torch.int32)  # any integer dtype
    scores = knn_predict(train, labels, torch.tensor([[3.0, 0.0]]), k=3, num_classes=4, temperature=0.5)
    # neighbours: cos 1 (class 2), 0.5 (class 0), 0 (class 2); the 180-degree row is not among them
    expected = [[math.exp(0.5 / 0.5), 0.0, math.exp(1 / 0.5) + math.exp(0 / 0.5), 0.0]]
    torch.testing.assert_close(scores, torch.tensor(expected), rtol=1e-6, atol=1e-6)
