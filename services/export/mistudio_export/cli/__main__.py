"""`python -m mistudio_export.cli` is the same as `mistudio-export`."""

import sys

from mistudio_export.cli.main import main

sys.exit(main())
