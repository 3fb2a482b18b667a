import sys

from nnship.export.cli import main

sys.exit(main())
