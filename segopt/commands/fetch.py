"""Fetch a public data set by name, verify it, lay it out for its config and check it.

    python -m segopt.fetch camvid                 # → data/camvid, read by configs/data/camvid.yaml
    python -m segopt.fetch cityscapes --from ~/Downloads   # archives a person downloaded

Names: camvid, membrane, magnetic_tiles, voc2012 (downloaded) and cityscapes, ade20k (``--from`` the archives
you downloaded: Cityscapes needs a login, ADE20K's terms are agreed to on its site). The
data set lands in ``<root>/<name>`` (root: ``--root``, else ``$SEGOPT_DATA_ROOT``, else
``data``). It is unpacked into a hidden temporary folder beside it and renamed into place
only when complete, so an interrupted or failed fetch leaves no half-made data set; an
interrupted download resumes on the next run. A complete data set is left alone.

Two checks guard what is put in place. An archive is compared with its recorded checksum
(or ``--checksum``); one without any is reported as unverified, with its sha256. A data set
with recorded content (CamVid, membrane, magnetic_tiles: their GitHub archives have no stable checksum) has
the decoded pixels of each labelled folder compared with the digests in
:mod:`segopt.public_data.catalog`; a difference stops the fetch, naming each folder with the digest
expected and found, unless ``--trust-content`` accepts the new files. Both digests and any
trust are written into the data set's ``.segopt-fetch.json``. Folders without recorded digests
(CamVid's test split, VOC, Cityscapes, ADE20K) are decoded whole all the same, so a damaged file
stops the fetch. The digest of every file is kept there too: ``fetch NAME --verify`` decodes what
is in place again and names each file changed, missing or added since. After preparing, the
data check runs with the data set's config, and on every other split laid out (CamVid's test),
and prints its report; the exit status is 1 when it finds a problem or the fetch fails.

One fetch of a name runs at a time: it holds ``<root>/.<name>.lock`` (let go when its process
ends, however it ends), and a second one stops at once, saying so, instead of deleting the
first one's partial folder as stale.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from segopt.data.files import DataError
from segopt.data.roots import DATA_ROOT_ENV, data_root
from segopt.public_data.catalog import DATA_SETS, PublicDataSet
from segopt.public_data.content import file_digests, listing_digest
from segopt.public_data.download import Archive, FetchError, Unreachable, download, extract, file_digest, parse_checksum

#: Written into a data set's folder as the last step; its presence means "complete".
MARKER = ".segopt-fetch.json"
DOWNLOADS = ".downloads"
_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "data"


def _say(message: str) -> None:
    print(f"segopt: {message}", file=sys.stderr)


def _from_hint(spec: PublicDataSet, archive: Archive) -> str:
    return f"python -m segopt.fetch {spec.name} --from PATH/{archive.filename}"


def _given_archives(spec: PublicDataSet, sources: list[Path]) -> dict[str, Path]:
    """Match ``--from`` paths (files, or folders holding them) to the data set's archives by file name."""
    wanted = {a.filename for a in spec.archives}
    found: dict[str, Path] = {}
    for source in sources:
        if source.is_dir():
            found.update({name: source / name for name in wanted if (source / name).is_file()})
        elif source.is_file():
            if source.name not in wanted:
                raise FetchError(f"--from {source}: {spec.name} is made from {sorted(wanted)}, not {source.name}; rename it if it is one of them")
            found[source.name] = source
        else:
            raise FetchError(f"--from {source} does not exist (resolved: {source.resolve()})")
    return found


def _obtain(spec: PublicDataSet, archive: Archive, given: dict[str, Path], downloads: Path, progress: bool) -> tuple[Path, bool]:
    """The archive's path, and whether segopt downloaded it (and may delete it afterwards)."""
    if archive.filename in given:
        return given[archive.filename], False
    if archive.url is None:
        names = " and ".join(a.filename for a in spec.archives)
        raise FetchError(
            f"{spec.name} is not downloaded by segopt: get {names} from {archive.page} yourself, then run: "
            f"python -m segopt.fetch {spec.name} --from FOLDER_WITH_THEM"
        )
    dest = downloads / archive.filename
    if dest.is_file():
        return dest, True
    try:
        return download(archive.url, dest, progress=progress), True
    except Unreachable as err:
        raise FetchError(f"cannot download {archive.url} ({err.reason}); offline? Fetch it by hand, then run: {_from_hint(spec, archive)}") from err


def _verify(archive: Archive, path: Path, pinned: dict[str, str], downloaded: bool, progress: bool) -> str:
    """Check ``path`` against its recorded (or ``--checksum``) digest; return the digest line for the record."""
    expected = pinned.get(archive.filename, archive.checksum)
    if expected is None:
        digest = file_digest(path, "sha256", progress)
        _say(
            f"{archive.filename} is unverified: no published checksum is recorded for it. Its sha256 is {digest}; "
            f"to pin it, pass --checksum {archive.filename}=sha256:{digest} (or record it in segopt/public_data/catalog.py)"
        )
        return f"sha256:{digest} (unverified)"
    algo, want = parse_checksum(expected, archive.filename)
    got = file_digest(path, algo, progress)
    if got != want:
        if downloaded:
            path.unlink()
            fate = "it was deleted; run the command again to download it afresh"
        else:
            fate = f"{path} is yours and was left alone; download it again"
        raise FetchError(f"checksum mismatch for {archive.filename}: {algo} is {got}, expected {want} (damaged or a different file); {fate}")
    return f"{algo}:{got}"


def _verify_content(spec: PublicDataSet, out: Path, trust: bool, progress: bool) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Compare the pixels of the prepared folders with the recorded ones; return the digest lines for the
    record, and each folder's file digests (what ``--verify`` compares with later)."""
    try:
        files = {pin.folder: file_digests(out / pin.folder, pin.read_as, progress) for pin in spec.content}
    except DataError as err:
        raise FetchError(f"{spec.name}: the prepared data cannot be read: {err}") from err
    found = {folder: listing_digest(digests) for folder, digests in files.items()}
    differ = [pin for pin in spec.content if pin.sha256 is not None and found[pin.folder] != pin.sha256]
    listing = "; ".join(f"{pin.folder}/ expected sha256:{pin.sha256}, found sha256:{found[pin.folder]}" for pin in differ)
    if differ and not trust:
        raise FetchError(
            f"{spec.name}: the decoded pixels differ from those recorded in segopt/public_data/catalog.py ({listing}). "
            "The upstream repository changed its files, or the archive is another one; nothing was put in place "
            "and the archive is kept. If you trust the new files, run the same command with --trust-content "
            "(or record the found digests in segopt/public_data/catalog.py)"
        )
    if differ:
        _say(f"{spec.name}: the decoded pixels differ from those recorded ({listing}); kept because of --trust-content")
    notes = {pin.folder: " (trusted: differs from the recorded)" if pin in differ else
             " (none recorded in segopt)" if pin.sha256 is None else "" for pin in spec.content}
    return {folder: f"sha256:{found[folder]}{notes[folder]}" for folder in found}, files


@contextmanager
def _lock(root: Path, name: str) -> Iterator[None]:
    """Hold ``root/.<name>.lock`` while fetching; the system lets it go when the process ends, however it ends."""
    path = root / f".{name}.lock"
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FetchError(
                f"another fetch of {name} is running (it holds {path}); wait for it to finish, then run this command again"
            ) from None
        yield


def _differences(recorded: dict[str, str], found: dict[str, str]) -> str:
    """``"2 changed (a.png, b.png), 1 missing (c.png)"``: what differs between two folders' file digests."""
    kinds = {
        "changed": [n for n in sorted(found) if n in recorded and found[n] != recorded[n]],
        "missing": sorted(set(recorded) - set(found)),
        "added": sorted(set(found) - set(recorded)),
    }
    return ", ".join(f"{len(names)} {kind} ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
                     for kind, names in kinds.items() if names)


def verify(name: str, root: Path, progress: bool = True) -> None:
    """Re-digest the folders of the fetched ``root/name`` and compare them with what its fetch recorded."""
    spec, target = DATA_SETS[name], root / name
    if not (target / MARKER).is_file():
        raise FetchError(
            f"{target} has no {MARKER}, so there is nothing recorded to verify against; fetch it first: "
            f"python -m segopt.fetch {name}"
        )
    marker = json.loads((target / MARKER).read_text())
    problems = []
    for pin in spec.content:
        recorded = marker.get("files", {}).get(pin.folder)
        if recorded is None:
            problems.append(f"{pin.folder}/ has no file digests in {MARKER} (fetched by an earlier segopt)")
            continue
        try:
            found = file_digests(target / pin.folder, pin.read_as, progress)
        except DataError as err:
            problems.append(f"{pin.folder}/: {'; '.join(err.problems)}")
            continue
        if found != recorded:
            problems.append(f"{pin.folder}/: {_differences(recorded, found)}")
    if problems:
        raise FetchError(
            f"{target} differs from what its fetch recorded in {MARKER}: {'; '.join(problems)}. Move it away and "
            f"fetch it again: python -m segopt.fetch {name}"
        )
    _say(f"{target}: the decoded pixels of {len(spec.content)} folder(s) match those recorded when it was fetched")


def _clean_stale(root: Path, name: str) -> None:
    for stale in root.glob(f".{name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)


def fetch(
    name: str, root: Path, sources: list[Path], pinned: dict[str, str], progress: bool = True, trust_content: bool = False
) -> Path | None:
    """Make ``root/name`` complete; return it, or None when it already was.

    ``trust_content`` accepts prepared pixels that differ from the recorded ones (reported, and recorded as trusted).
    """
    spec = DATA_SETS[name]
    target = root / name
    if (target / MARKER).is_file():
        _say(f"{target} is already complete (see {target / MARKER}); nothing to do")
        return None
    if target.exists():
        raise FetchError(
            f"{target} exists but was not made by this command (it has no {MARKER}); move it away, or pass "
            "another --root"
        )
    given = _given_archives(spec, sources)
    missing = [a for a in spec.archives if a.filename not in given]
    if sources and missing:
        names = " and ".join(a.filename for a in missing)
        pages = sorted({a.page for a in missing if a.url is None})
        how = f"get it from {' or '.join(pages)}" if pages else "put it there, or leave out --from to download it"
        raise FetchError(
            f"--from {', '.join(map(str, sources))}: {names} is not there ({name} is made from "
            f"{', '.join(a.filename for a in spec.archives)}); with --from nothing is downloaded: {how}"
        )
    root.mkdir(parents=True, exist_ok=True)
    with _lock(root, name):
        return _fetch_locked(spec, root, given, pinned, progress, trust_content)


def _fetch_locked(
    spec: PublicDataSet, root: Path, given: dict[str, Path], pinned: dict[str, str], progress: bool, trust_content: bool
) -> Path:
    name, target = spec.name, root / spec.name
    _clean_stale(root, name)
    obtained = [(archive, *_obtain(spec, archive, given, root / DOWNLOADS, progress)) for archive in spec.archives]
    record = {archive.filename: _verify(archive, path, pinned, ours, progress) for archive, path, ours in obtained}
    work = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=root))
    try:
        for _, path, _ in obtained:
            extract(path, work / "raw", progress)
        spec.prepare(work / "raw", work / "out")
        content, files = _verify_content(spec, work / "out", trust_content, progress)
        marker = {"name": name, "archives": record, "content": content, "prepared": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "files": files}
        (work / "out" / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        (work / "out").rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for _, path, ours in obtained:
        if ours:
            path.unlink(missing_ok=True)
    _say(f"{target} is ready")
    return target


def check(name: str, target: Path) -> bool:
    """Run the data check with ``configs/data/<name>.yaml`` on ``target``; print the report; True when clean."""
    from segopt.commands.check import check_source, render, source_from_mapping

    config = _CONFIGS / f"{name}.yaml"
    if not config.is_file():
        _say(f"{config} not found (segopt installed without its configs?); check the data yourself with python -m segopt.check")
        return True
    data = yaml.safe_load(config.read_text())["data"]
    init_args = dict(data["source"]["init_args"], root=str(target))
    for split, images, masks in DATA_SETS[name].extra_splits:  # laid out too: checked, though the config trains without them
        init_args["image_dirs"] = {**init_args["image_dirs"], split: images}
        init_args["mask_dirs"] = {**init_args["mask_dirs"], split: masks}
    source = dict(data["source"], init_args=init_args)
    built = source_from_mapping(source)
    ignore_index = data.get("ignore_index", 255)
    result = check_source(built, ignore_index)
    print(render(built, ignore_index, result))
    return result.ok


def _pins(items: list[str]) -> dict[str, str]:
    pins = {}
    for item in items:
        filename, sep, value = item.partition("=")
        if not sep:
            raise FetchError(f"--checksum {item!r}: write it as FILE=ALGORITHM:HEX, e.g. unet-master.zip=sha256:...")
        parse_checksum(value, filename)
        pins[filename] = value
    return pins


def main(argv: list[str] | None = None) -> int:
    """Fetch, prepare and check one data set; 0 when it is ready and clean."""
    parser = argparse.ArgumentParser(
        prog="python -m segopt.fetch",
        description=__doc__.split("\n\n")[0],
        epilog="\n".join(f"  {s.name:<11} {s.about}" for s in DATA_SETS.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", choices=sorted(DATA_SETS), help="the data set")
    parser.add_argument("--root", type=Path, default=None, help=f"folder that receives <name>/ (default: ${DATA_ROOT_ENV}, else data)")
    parser.add_argument("--from", dest="sources", type=Path, action="append", default=[], metavar="PATH",
                        help="an archive you downloaded, or a folder holding the archives (repeatable)")
    parser.add_argument("--checksum", action="append", default=[], metavar="FILE=ALGO:HEX",
                        help="pin (or override) an archive's checksum, e.g. unet-master.zip=sha256:<hex>")
    parser.add_argument("--trust-content", action="store_true",
                        help="accept prepared pixels that differ from the recorded digests (the upstream files changed)")
    parser.add_argument("--verify", action="store_true",
                        help="re-digest the fetched data set's pixels and name what differs from its fetch's record")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    root = args.root if args.root is not None else data_root()
    if args.verify:
        try:
            verify(args.name, root, progress=not args.no_progress)
        except FetchError as err:
            _say(str(err))
            return 1
        return 0
    try:
        target = fetch(args.name, root, args.sources, _pins(args.checksum), progress=not args.no_progress,
                       trust_content=args.trust_content)
    except FetchError as err:
        _say(str(err))
        return 1
    if target is None:
        return 0
    if not check(args.name, target):
        _say(f"{target} was prepared, but the data check above found problems")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
