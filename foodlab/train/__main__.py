"""``python -m foodlab.train ...`` is ``foodlab train ...`` (what ``torchrun -m foodlab.train`` runs)."""
import sys

from foodlab.cli import main

raise SystemExit(main(["train", *sys.argv[1:]]))
