import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from udi.eval.logreg import decision_function, fit_logistic


def test_multinomial_matches_scikit_learn():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=300) > 0).astype(int) + (x[:, 2] > 1)
    reference = LogisticRegression(C=0.5, max_iter=10_000, tol=1e-10).fit(x, y)
    weight, bias = fit_logistic(torch.from_numpy(x), torch.from_numpy(y), 3, C=0.5)
    ours = decision_function(torch.from_numpy(x), weight, bias).softmax(1).numpy()
    assert np.allclose(ours, reference.predict_proba(x), atol=1e-4)


def test_multilabel_equals_independent_binary_problems():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 4))
    y = np.stack([(x[:, 0] > 0), (x[:, 1] + x[:, 2] > 0.3)], axis=1).astype(float)
    weight, bias = fit_logistic(torch.from_numpy(x), torch.from_numpy(y), 2, C=2.0, multilabel=True)
    for j in range(2):
        reference = LogisticRegression(C=2.0, max_iter=10_000, tol=1e-10).fit(x, y[:, j])
        assert np.allclose(weight[:, j].numpy(), reference.coef_[0], atol=1e-4)
        assert abs(bias[j].item() - reference.intercept_[0]) < 1e-4
