import torch

from udi.eval.layers import block_feature_names, layerwise_eval

DEPTH, CLASSES, DIM = 4, 5, 16


def blocks(labels, seed, informative):
    """Block features (n, DIM): noise, except the names in ``informative`` which hold
    well-separated class clusters."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(CLASSES, DIM, generator=torch.Generator().manual_seed(123)) * 4
    return {
        name: (centres[labels] if name in informative else 0) + torch.randn(len(labels), DIM, generator=g)
        for name in block_feature_names(DEPTH)
    }


def make_data():
    g = torch.Generator().manual_seed(0)
    train_y, val_y = torch.randint(0, CLASSES, (300,), generator=g), torch.randint(0, CLASSES, (100,), generator=g)
    informative = {"block2_cls", "block3_patch_mean"}
    return blocks(train_y, 1, informative), train_y, blocks(val_y, 2, informative), val_y


def test_block_feature_names():
    assert block_feature_names(2) == ["block0_cls", "block0_patch_mean", "block1_cls", "block1_patch_mean"]


def test_the_informative_block_is_found():
    train_b, train_y, val_b, val_y = make_data()
    result = layerwise_eval(train_b, train_y, val_b, val_y)
    assert set(result) == {"layers", "best_cls_block", "best_cls_knn_top1", "best_patch_mean_block",
                           "best_patch_mean_knn_top1"}
    assert list(result["layers"]) == block_feature_names(DEPTH)
    assert all(set(v) == {"knn_top1"} for v in result["layers"].values())
    assert result["best_cls_block"] == 2 and result["best_cls_knn_top1"] > 95
    assert result["best_patch_mean_block"] == 3 and result["best_patch_mean_knn_top1"] > 95
    assert result["layers"]["block0_cls"]["knn_top1"] < 50  # noise: chance is 20%


def test_linear_fn_is_called_once_per_block_feature():
    train_b, train_y, val_b, val_y = make_data()
    names = {id(v): k for k, v in train_b.items()}
    calls = []

    def linear_fn(train_x, train_labels, val_x, val_labels):
        name = names[id(train_x)]
        assert val_x is val_b[name] and train_labels is train_y and val_labels is val_y
        calls.append(name)
        return 90.0 if name in ("block1_cls", "block0_patch_mean") else 10.0

    result = layerwise_eval(train_b, train_y, val_b, val_y, linear_fn=linear_fn)
    assert sorted(calls) == sorted(block_feature_names(DEPTH))
    assert result["layers"]["block1_cls"]["linear_top1"] == 90.0
    assert result["best_cls_linear_block"] == 1 and result["best_cls_linear_top1"] == 90.0
    assert result["best_patch_mean_linear_block"] == 0
    assert result["best_cls_block"] == 2  # the k-NN choice is unchanged
