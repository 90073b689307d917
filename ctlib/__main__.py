"""``python -m ctlib ...`` runs the ``ctlib`` command."""
import sys

from ctlib.cli import main

sys.exit(main())
