"""``python -m vitkit`` runs the command line."""

import sys

from vitkit.cli import main

sys.exit(main())
