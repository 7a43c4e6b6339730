"""Archives of public data sets: resumable downloads, checksums, extraction that cannot half-succeed.

A download is written to ``<file>.part`` and renamed when every byte has arrived; run again
after an interruption and it continues from where it stopped (an HTTP ``Range`` request;
a server that ignores it sends the whole file again). Archives are unpacked by the caller
into a temporary folder that is renamed into place only when complete (see
:mod:`segopt.commands.fetch`).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

_CHUNK = 1 << 20
_ALGORITHMS = ("md5", "sha1", "sha256")


class FetchError(RuntimeError):
    """A fetch that cannot go on; the message says why and what to do."""


class Unreachable(FetchError):
    """The server could not be reached at all (no network, DNS, refused)."""

    def __init__(self, url: str, reason: str) -> None:
        self.url, self.reason = url, reason
        super().__init__(f"cannot reach {url} ({reason})")


@dataclass(frozen=True)
class Archive:
    """One file a data set is made from.

    Args:
        filename: its name on disk (and what ``--from`` looks for).
        url: where it is downloaded from; None when only a person can get it (login).
        checksum: ``"md5:<hex>"``, ``"sha1:<hex>"`` or ``"sha256:<hex>"``, copied from a published
            source; None when none is published (the file is then reported as unverified,
            with its sha256 so a user can pin it).
        page: where a person gets it by hand.
    """

    filename: str
    url: str | None
    checksum: str | None
    page: str = ""


def parse_checksum(text: str, what: str) -> tuple[str, str]:
    """``"sha256:<hex>"`` → ``("sha256", "<hex>")``; a clear error for anything else."""
    algo, _, digest = text.partition(":")
    algo, digest = algo.strip().lower(), digest.strip().lower()
    if algo not in _ALGORITHMS or not digest or any(c not in "0123456789abcdef" for c in digest):
        raise FetchError(f"{what}: checksum {text!r} is not ALGORITHM:HEX with ALGORITHM one of {', '.join(_ALGORITHMS)}")
    return algo, digest


def file_digest(path: Path, algo: str, progress: bool = False) -> str:
    """The hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algo)
    with open(path, "rb") as f, tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, desc=f"{algo} {path.name}", disable=not progress, leave=False
    ) as bar:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def download(url: str, dest: Path, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``); raise :class:`FetchError` on any failure."""
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "segopt"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as err:
        if err.code == 416 and have:  # nothing left to send: the part file is already whole
            os.replace(part, dest)
            return dest
        raise FetchError(f"{url}: the server answered HTTP {err.code} {err.reason}") from err
    except (URLError, TimeoutError, ConnectionError) as err:
        raise Unreachable(url, str(getattr(err, "reason", err))) from err
    with response:
        resumed = have > 0 and response.status == 206
        start = have if resumed else 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        received = start
        try:
            with open(part, "ab" if resumed else "wb") as f, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, desc=dest.name, disable=not progress
            ) as bar:
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except (http.client.HTTPException, OSError) as err:
            raise _interrupted(url, part, received, total, repr(err)) from err
    if total is not None and received < total:
        raise _interrupted(url, part, received, total, "the connection closed early")
    os.replace(part, dest)
    return dest


def _interrupted(url: str, part: Path, received: int, total: int | None, why: str) -> FetchError:
    of = f" of {total:,}" if total is not None else ""
    return FetchError(
        f"download of {url} interrupted after {received:,}{of} bytes ({why}); the {received:,} bytes are kept in "
        f"{part}: run the same command again to resume"
    )


def _safe_member(name: str, archive: Path) -> None:
    parts = Path(name).parts
    if Path(name).is_absolute() or ".." in parts:
        raise FetchError(f"{archive}: member {name!r} would be written outside the extraction folder; not extracting it")


def _safe_tar_member(member: tarfile.TarInfo, archive: Path) -> None:
    """The member check, plus what tarfile's "data" filter refuses and a Python without the filter would not."""
    _safe_member(member.name, archive)
    if member.issym() or member.islnk():
        target = os.path.join(os.path.dirname(member.name), member.linkname) if member.issym() else member.linkname
        if os.path.isabs(member.linkname) or os.path.normpath(target).split(os.sep)[0] == "..":
            raise FetchError(
                f"{archive}: member {member.name!r} links to {member.linkname!r}, outside the extraction folder; "
                "not extracting it"
            )
    elif not (member.isfile() or member.isdir()):
        raise FetchError(f"{archive}: member {member.name!r} is a device or pipe, not a file; not extracting it")


def _tar_filter() -> dict[str, str]:
    """tarfile's "data" filter where this Python has it (3.10.12, 3.11.4 and later), else nothing."""
    return {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def extract(archive: Path, dest: Path, progress: bool = True) -> None:
    """Unpack a .zip, .tar, .tar.gz or .tgz into ``dest``; members may not escape it."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                members = z.infolist()
                for member in tqdm(members, desc=f"extract {archive.name}", unit="file", disable=not progress):
                    _safe_member(member.filename, archive)
                    z.extract(member, dest)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                for member in tqdm(t, desc=f"extract {archive.name}", unit="file", disable=not progress):
                    _safe_tar_member(member, archive)
                    t.extract(member, dest, **_tar_filter())
        else:
            raise FetchError(f"{archive} is neither a zip nor a tar archive; was the right file given?")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as err:
        raise FetchError(f"{archive} is damaged ({err}); delete it and fetch again") from err
