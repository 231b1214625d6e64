"""``python -m torchformer``: the ``torchformer`` command, so that torchrun can start it
(``torchrun --nproc-per-node 2 -m torchformer train CONFIG``)."""

import sys

from torchformer.cli import main

if __name__ == "__main__":
    sys.exit(main())
