"""Fixtures shared by the whole test suite."""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture
def err_contains(capsys):
    """``err_contains(message)``: whether the captured stderr holds ``message``, whitespace
    ignored (the rich console wraps long lines, at spaces or inside long paths)."""

    def check(message: str) -> bool:
        return "".join(message.split()) in "".join(capsys.readouterr().err.split())

    return check
