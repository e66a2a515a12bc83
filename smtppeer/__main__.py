"""``python -m smtppeer``: the admin command, where the ``smtppeer`` script is not on PATH."""

import sys

from smtppeer.app import main

sys.exit(main())
