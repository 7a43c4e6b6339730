"""Entry points: the training CLI (``fit``, ``validate``, ``test``, ``predict``), ``plan``,
``check``, ``fetch`` and ``export``, and :func:`~segopt.commands.from_config.build_from_config`
for building what a config describes from Python. Each command runs as ``python -m segopt.<command>``."""
