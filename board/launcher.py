"""The entry point of a rendered runtime, copied there as ``app.py``: ``python3 app.py COMMAND ...``.

It only calls :func:`board.app.main`; run from the runtime folder, Python puts that folder first
on ``sys.path``, so ``board`` and ``codec`` are the copies beside it.
"""

import sys

from board.app import main

if __name__ == "__main__":
    sys.exit(main())
