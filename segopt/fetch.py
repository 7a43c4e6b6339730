"""``python -m segopt.fetch ...``: see :mod:`segopt.commands.fetch`."""

import sys

from segopt.commands.fetch import main

if __name__ == "__main__":
    sys.exit(main())
