"""Fixtures shared by the whole test suite."""

import pytest


@pytest.fixture
def err_contains(capsys):
    """``err_contains(message)``: whether the captured stderr holds ``message``, whitespace
    ignored (the rich console wraps long lines, at spaces or inside long paths)."""

    def check(message: str) -> bool:
        return "".join(message.split()) in "".join(capsys.readouterr().err.split())

    return check
