"""``python -m segopt.cli fit|validate|test|predict ...``: see :mod:`segopt.commands.cli`."""

from segopt.commands.cli import main

if __name__ == "__main__":
    main()
