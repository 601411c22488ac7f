"""`python -m minicdn.cli`: how the dev cluster starts its child processes."""

import sys

from minicdn.cli.main import main

sys.exit(main())
