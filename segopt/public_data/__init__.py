"""Public data sets by name: where each archive comes from, how it is downloaded and checked,
and how it is laid out for ``configs/data/<name>.yaml``. ``python -m segopt.fetch`` drives it."""
