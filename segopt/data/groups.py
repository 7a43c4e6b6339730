"""Groups of related files (a video sequence, a volume, a source image) read from file names.

Frames of one sequence look alike, so a validation frame whose sequence is also trained on
rewards memorising that sequence rather than generalising. A group is read from a file's stem
by a regular expression whose first group is the group's name: CamVid's ``^([^_]+)_`` turns
``0006R0_f02130`` into ``0006R0``. :class:`~segopt.data.PairedFolder` holds whole groups out
for validation with it (``group_pattern``, ``val_groups``); the data check warns when file
names show that validation and training share a group.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

#: The guess when a config names no pattern: a prefix, then ``_`` or ``-``, then a frame number
#: (after at most a few letters, e.g. ``f02130``), and nothing else.
DEFAULT_GROUP_PATTERN = r"^(.+)[_-][A-Za-z]{0,5}\d+$"

#: How the data check's warning tells a user to split by group.
HOW_TO_SPLIT = (
    "split by group: pool the folders (e.g. image_dirs: {train: [train, val]}, mask_dirs likewise), set "
    "data.source.init_args.group_pattern to a regular expression whose first group is the group's name "
    "(e.g. '^([^_]+)_') and val_groups to the groups held out for validation, as "
    "configs/data/camvid_by_sequence.yaml does"
)


def pattern_problem(pattern: str) -> str | None:
    """What is wrong with ``group_pattern`` (not a regular expression, or no group in it), else None."""
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        return f"group_pattern {pattern!r} is not a regular expression ({err}); fix it, e.g. '^([^_]+)_'"
    if compiled.groups < 1:
        return f"group_pattern {pattern!r} has no group; put the group's part of a name in parentheses, e.g. '^([^_]+)_'"
    return None


def group_of(stem: str, pattern: str) -> str | None:
    """The group of a file's stem: the first group of ``pattern``'s match, None when it does not match."""
    match = re.search(pattern, stem)
    return match.group(1) if match and match.group(1) else None


def shared_groups(train: Iterable[str], val: Iterable[str], pattern: str | None = None) -> dict[str, tuple[int, int]]:
    """The groups that both training and validation stems fall in: group → (training, validation) count.

    With ``pattern`` None the guess is :data:`DEFAULT_GROUP_PATTERN`, kept conservative: it
    counts only when every stem matches it and the stems fall in at least two groups (a single
    prefix shared by all, such as ``img_001``, says nothing about groups).
    """
    train, val = list(train), list(val)
    pattern_used = pattern or DEFAULT_GROUP_PATTERN
    train_groups = [group_of(s, pattern_used) for s in train]
    val_groups = [group_of(s, pattern_used) for s in val]
    if pattern is None and (None in train_groups or None in val_groups or len(set(train_groups + val_groups)) < 2):
        return {}
    counts_train, counts_val = Counter(g for g in train_groups if g), Counter(g for g in val_groups if g)
    return {g: (counts_train[g], counts_val[g]) for g in sorted(set(counts_train) & set(counts_val))}


def shared_groups_warning(shared: dict[str, tuple[int, int]], pattern: str | None) -> str:
    """The data check's warning for :func:`shared_groups`' result."""
    how = (
        f"read by group_pattern {pattern!r}"
        if pattern
        else "guessed as the prefix before a frame number; set group_pattern to read them otherwise"
    )
    shown = ", ".join(f"{g} ({t} training, {v} validation files)" for g, (t, v) in list(shared.items())[:5])
    more = f" and {len(shared) - 5} more" if len(shared) > 5 else ""
    return (
        f"validation and training share {len(shared)} group(s) by their file names ({how}): {shown}{more}; "
        "related frames look alike, so such a validation score rewards memorising a group and overstates "
        f"what the model does on unseen data; {HOW_TO_SPLIT}"
    )
