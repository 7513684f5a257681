"""``python -m medgen`` runs the command line."""

import sys

from medgen.cli import main

sys.exit(main())
