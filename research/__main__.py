"""``python -m research``: see :mod:`research.cli`."""

from research.cli import run

__all__: list[str] = []

if __name__ == "__main__":
    run()
