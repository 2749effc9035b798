"""`python -m adajudge_hf.hub` is `adajudge push`."""

import sys

from .cli import main


sys.exit(main())
