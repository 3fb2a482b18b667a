import sys

from nnship.training.cli import main

sys.exit(main())
