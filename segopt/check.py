"""``python -m segopt.check ...``: see :mod:`segopt.commands.check`."""

import sys

from segopt.commands.check import main

if __name__ == "__main__":
    sys.exit(main())
