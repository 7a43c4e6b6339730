"""``python -m segopt.data.fetch ...``, the command's name before the layered layout: runs ``segopt.fetch``.

An entry point kept for earlier instructions and scripts (see
:data:`segopt.commands.moved_paths.MOVED_COMMANDS`); nothing in the data layer imports it.
"""

import sys

if __name__ == "__main__":
    from segopt.commands.fetch import main
    from segopt.commands.moved_paths import MOVED_COMMANDS

    old = "segopt.data.fetch"
    print(f"note: python -m {old} is now python -m {MOVED_COMMANDS[old]} (same arguments)", file=sys.stderr)
    sys.exit(main())
