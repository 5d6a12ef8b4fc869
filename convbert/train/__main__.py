"""``python -m convbert.train``: the same as the ``convbert-train`` console script."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
