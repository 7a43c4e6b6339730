"""``python -m segopt.plan ...``: see :mod:`segopt.commands.plan`."""

import sys

from segopt.commands.plan import main

if __name__ == "__main__":
    sys.exit(main())
