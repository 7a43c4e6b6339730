"""``python -m segopt.export ...``: see :mod:`segopt.commands.export`."""

from segopt.commands.export import main

if __name__ == "__main__":
    main()
