"""``python -m biocnn`` = the ``biocnn`` command (used by torchrun)."""

import sys

from biocnn.cli import main

sys.exit(main())
