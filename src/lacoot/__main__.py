"""``python -m lacoot``: the ``lacoot`` command (also what ``torchrun -m lacoot`` runs)."""

import sys

from .cli import main

sys.exit(main())
