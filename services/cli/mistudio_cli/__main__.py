"""`python -m mistudio_cli` is the same as `mistudio-export`."""

import sys

from mistudio_cli.main import main

sys.exit(main())
