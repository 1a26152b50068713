"""Tests for image discovery and preparation (rpq.images)."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chaoskit import in_a_fork_as_nobody
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageCms

from rpq.errors import InputError, UsageError
from rpq.images import (
    ImageFile,
    Prepared,
    Skipped,
    content_digest,
    discover,
    prepare,
    sniff,
)

# ----------------------------------------------------------------------------- helpers


def encode(im: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **options)
    return buf.getvalue()


def noise(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """Random pixels, so that truncating an encoded file really loses image data."""
    bands = len(mode)
    return Image.frombytes(mode, size, os.urandom(size[0] * size[1] * bands))


def png(size: tuple[int, int] = (8, 6), mode: str = "RGB") -> bytes:
    return encode(Image.new(mode, size, "red"), "PNG")


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def rels(items: Iterator[ImageFile | Skipped]) -> list[str]:
    return [item.rel for item in items]


def images_of(root: Path, **kwargs: Any) -> list[str]:
    return [i.rel for i in discover(root, **kwargs) if isinstance(i, ImageFile)]


def image_file(path: Path, rel: str | None = None) -> ImageFile:
    return ImageFile(path.absolute(), rel or path.name)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int) -> bytes:
    """A small valid-looking PNG whose header claims width x height pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def pixel(im: Image.Image, x: int, y: int) -> tuple[int, ...]:
    value = im.getpixel((x, y))
    assert isinstance(value, tuple)
    return value


def decoded(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


# ----------------------------------------------------------------------------- sniffing


@pytest.mark.parametrize(
    ("fmt", "kind"),
    [
        ("PNG", "png"),
        ("JPEG", "jpeg"),
        ("WEBP", "webp"),
        ("GIF", "gif"),
        ("BMP", "bmp"),
        ("TIFF", "tiff"),
    ],
)
def test_sniff_recognises_each_supported_format(fmt: str, kind: str) -> None:
    assert sniff(encode(Image.new("RGB", (3, 3)), fmt)[:32]) == kind


@given(st.binary(max_size=64))
def test_sniff_never_fails_and_text_is_never_an_image(head: bytes) -> None:
    sniff(head)
    assert sniff(b"BM just some text that starts like a bitmap") is None


# ----------------------------------------------------------------------------- discovery


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """An empty folder to walk (tmp_path itself also holds the test's private HOME)."""
    path = tmp_path / "in"
    path.mkdir()
    return path


def test_order_is_sorted_depth_first_with_files_and_dirs_interleaved(folder: Path) -> None:
    for rel in ["b.png", "a/y.png", "a/x.png", "A.png", "c.png", "b2/z.png", "a/sub/q.png"]:
        write(folder / rel, png())
    expected = ["A.png", "a/sub/q.png", "a/x.png", "a/y.png", "b.png", "b2/z.png", "c.png"]
    assert rels(discover(folder)) == expected
    assert rels(discover(folder)) == expected


def test_order_does_not_depend_on_creation_order(folder: Path) -> None:
    names = ["m.png", "k/1.png", "z.png", "k/0.png", "a.png"]
    for root, order in ((folder / "one", names), (folder / "two", names[::-1])):
        for rel in order:
            write(root / rel, png())
    assert rels(discover(folder / "one")) == rels(discover(folder / "two"))


def test_image_file_has_absolute_path_and_posix_rel(folder: Path, monkeypatch) -> None:
    write(folder / "d" / "e" / "f.png", png())
    monkeypatch.chdir(folder)
    [item] = discover(Path("."))
    assert isinstance(item, ImageFile)
    assert item.path.is_absolute()
    assert item.path == (folder / "d" / "e" / "f.png").absolute()
    assert item.rel == "d/e/f.png"


def test_recursion_can_be_turned_off(folder: Path) -> None:
    write(folder / "top.png", png())
    write(folder / "sub" / "deep.png", png())
    assert images_of(folder, recursive=False) == ["top.png"]
    assert images_of(folder) == ["sub/deep.png", "top.png"]


def test_include_pattern_without_slash_matches_names_at_any_depth(folder: Path) -> None:
    for rel in ["a.jpg", "b.png", "x/c.jpg", "x/y/D.JPG", "x/y/e.png"]:
        write(folder / rel, png())
    assert images_of(folder, include=["*.jpg"]) == ["a.jpg", "x/c.jpg", "x/y/D.JPG"]
    assert images_of(folder, include=["*.jpg", "e.*"]) == [
        "a.jpg",
        "x/c.jpg",
        "x/y/D.JPG",
        "x/y/e.png",
    ]


def test_pattern_with_slash_matches_the_whole_relative_path(folder: Path) -> None:
    for rel in ["raw/a.png", "raw/deep/b.png", "done/raw/c.png", "d.png"]:
        write(folder / rel, png())
    assert images_of(folder, include=["raw/*"]) == ["raw/a.png", "raw/deep/b.png"]
    assert images_of(folder, exclude=["raw/deep/*"]) == ["d.png", "done/raw/c.png", "raw/a.png"]


def test_exclude_wins_and_prunes_directories(folder: Path, monkeypatch) -> None:
    for rel in ["keep.png", "skip.png", "thumbs/a.png", "x/thumbs/b.png", "x/c.png"]:
        write(folder / rel, png())
    listed: list[str] = []
    real_scandir = os.scandir

    def spying_scandir(path: Any = None) -> Any:
        if path is not None:
            listed.append(os.path.basename(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", spying_scandir)
    found = images_of(folder, include=["*.png"], exclude=["skip.png", "thumbs"])
    assert found == ["keep.png", "x/c.png"]
    assert "thumbs" not in listed  # pruned, not listed and filtered


def test_filtered_out_files_are_not_reported(folder: Path) -> None:
    write(folder / "a.png", png())
    write(folder / "notes.txt", "hello")
    assert list(discover(folder, exclude=["*.txt"])) == [image_file(folder / "a.png")]


def test_hidden_files_and_directories_are_skipped_silently(folder: Path) -> None:
    write(folder / ".hidden.png", png())
    write(folder / ".git" / "x.png", png())
    write(folder / "sub" / ".DS_Store", "junk")
    write(folder / "sub" / "v.png", png())
    assert rels(discover(folder)) == ["sub/v.png"]


def test_content_decides_not_the_extension(folder: Path) -> None:
    write(folder / "fake.png", "this is text, not a picture\n")
    write(folder / "photo.txt", encode(Image.new("RGB", (2, 2)), "JPEG"))
    write(folder / "empty.png", b"")
    write(folder / "doc.jpg", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    write(folder / "blob.webp", bytes(range(256)))
    write(folder / "tiny.gif", b"GI")
    items = {i.rel: i for i in discover(folder)}
    assert items["photo.txt"] == image_file(folder / "photo.txt")
    assert items["fake.png"] == Skipped("fake.png", "not an image (content is text)")
    assert items["empty.png"] == Skipped("empty.png", "empty file")
    assert items["doc.jpg"] == Skipped("doc.jpg", "not an image (content is PDF)")
    assert isinstance(items["blob.webp"], Skipped)
    assert items["blob.webp"].reason.startswith("not an image (unrecognised content: 00 01 02")
    assert items["tiny.gif"] == Skipped("tiny.gif", "not an image (content is text)")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_every_supported_format_is_discovered(folder: Path, fmt: str) -> None:
    write(folder / "img.bin", encode(Image.new("RGB", (3, 3)), fmt))
    assert images_of(folder) == ["img.bin"]


def test_odd_names_come_back_exactly(folder: Path) -> None:
    names = [
        "a b.png",
        "é ü 日本.png",
        "new\nline.png",
        "quote\"s'.png",
        "back\\slash.png",
        "tab\there.png",
    ]
    for name in names:
        write(folder / "dir with space" / name, png())
    found = list(discover(folder))
    assert [i.rel for i in found] == sorted(f"dir with space/{n}" for n in names)
    assert all(isinstance(i, ImageFile) and i.path.is_file() for i in found)


def test_names_that_are_not_utf8_are_kept_and_usable(folder: Path) -> None:
    raw = os.fsencode(folder) + b"/caf\xe9.png"
    with open(raw, "wb") as f:
        f.write(png())
    [item] = discover(folder)
    assert isinstance(item, ImageFile)
    assert item.rel == "caf\udce9.png"
    assert prepare(item).data == png()


def test_symlinks_to_files_and_directories_are_followed(folder: Path) -> None:
    outside = folder / "outside"
    write(outside / "o.png", png())
    root = folder / "root"
    write(root / "real.png", png())
    (root / "link.png").symlink_to(root / "real.png")
    (root / "linked_dir").symlink_to(outside, target_is_directory=True)
    found = list(discover(root))
    assert rels(iter(found)) == ["link.png", "linked_dir/o.png", "real.png"]
    assert found[0] == ImageFile(root / "link.png", "link.png")


def test_symlink_loops_are_reported_not_followed(folder: Path) -> None:
    write(folder / "a" / "x.png", png())
    (folder / "a" / "up").symlink_to(folder, target_is_directory=True)
    (folder / "a" / "self").symlink_to(folder / "a" / "self")
    found = list(discover(folder))
    assert found == [
        Skipped("a/self", "symlink loop"),
        Skipped("a/up", "symlink loop"),
        image_file(folder / "a" / "x.png", "a/x.png"),
    ]


def test_a_directory_reached_twice_is_walked_once(folder: Path) -> None:
    write(folder / "shared" / "s.png", png())
    root = folder / "root"
    root.mkdir()
    (root / "one").symlink_to(folder / "shared", target_is_directory=True)
    (root / "two").symlink_to(folder / "shared", target_is_directory=True)
    found = list(discover(root))
    assert found[0] == ImageFile(root / "one" / "s.png", "one/s.png")
    assert found[1] == Skipped("two", "same directory as 'one', already walked")
    assert len(found) == 2


def test_broken_symlink_is_reported(folder: Path) -> None:
    (folder / "gone.png").symlink_to(folder / "nowhere.png")
    assert list(discover(folder)) == [Skipped("gone.png", "broken symlink")]


def test_fifo_is_reported_without_blocking(folder: Path) -> None:
    os.mkfifo(folder / "pipe.png")
    write(folder / "z.png", png())
    assert list(discover(folder)) == [
        Skipped("pipe.png", "not a regular file"),
        image_file(folder / "z.png"),
    ]


def test_file_that_vanishes_while_walking_is_reported(folder: Path) -> None:
    write(folder / "a.png", png())
    write(folder / "b.png", png())
    walk = discover(folder)
    assert next(walk).rel == "a.png"
    (folder / "b.png").unlink()
    assert list(walk) == [Skipped("b.png", "vanished while listing")]


def _probe(root: Path) -> dict[str, object]:
    out: dict[str, object] = {
        "items": [[type(i).__name__, i.rel, getattr(i, "reason", "")] for i in discover(root)]
    }
    try:
        prepare(ImageFile(root / "locked.png", "locked.png"))
    except InputError as exc:
        out["prepare"] = str(exc)
    return out


def _probe_unreadable(root: Path) -> dict[str, object]:
    """Run discovery and prepare over `root` with file permissions in force.

    Root reads through any file mode, so as root the probe runs in a forked child that
    drops to the unprivileged user `nobody` first.
    """
    if os.geteuid() != 0:
        return _probe(root)
    Image.init()  # import every plugin now: the child must not need the import lock
    result: dict[str, object] = in_a_fork_as_nobody(lambda: _probe(root), timeout=30)
    return result


def test_unreadable_file_and_directory_are_reported(shared_dir: Path) -> None:
    write(shared_dir / "a.png", png()).chmod(0o644)
    write(shared_dir / "locked.png", png()).chmod(0o000)
    write(shared_dir / "private" / "p.png", png()).chmod(0o644)
    (shared_dir / "private").chmod(0o000)
    # Readable but not searchable: its names can be listed, its entries cannot be opened.
    write(shared_dir / "listonly" / "l.png", png()).chmod(0o644)
    (shared_dir / "listonly").chmod(0o644)
    result = _probe_unreadable(shared_dir)
    assert result["items"] == [
        ["ImageFile", "a.png", ""],
        ["Skipped", "listonly/l.png", "unreadable: permission denied"],
        ["Skipped", "locked.png", "unreadable: permission denied"],
        ["Skipped", "private", "unreadable: permission denied"],
    ]
    assert result["prepare"] == (
        "cannot read it (permission denied). "
        "Check its permissions or remove it from the folder."
    )


def test_missing_root_is_a_usage_error_at_call_time(folder: Path) -> None:
    with pytest.raises(UsageError, match="nope does not exist"):
        discover(folder / "nope")  # no iteration needed
    write(folder / "file.png", png())
    with pytest.raises(UsageError, match=r"file\.png is not a directory"):
        discover(folder / "file.png")


def test_discovery_is_lazy_and_lists_one_directory_at_a_time(folder: Path, monkeypatch) -> None:
    for sub in "abcdef":
        for i in range(3):
            write(folder / sub / f"{i}.png", png())
            write(folder / sub / "deeper" / f"{i}.png", png())
    listed: list[str] = []
    real_scandir = os.scandir

    def counting_scandir(path: Any = None) -> Any:
        # Only our folder counts: other code in the process may list its own directories.
        if path is not None and os.path.abspath(path).startswith(str(folder)):
            listed.append(os.path.relpath(path, folder))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", counting_scandir)
    walk = discover(folder)
    assert listed == []
    first = next(walk)
    assert first.rel == "a/0.png"
    assert listed == [".", "a"]
    assert len(list(walk)) == 6 * 6 - 1
    assert len(listed) == 1 + 6 * 2


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_folder_of_100k_files_streams_in_bounded_memory(folder: Path) -> None:
    flat = folder / "flat"
    flat.mkdir()
    count = 100_000
    for i in range(count):
        # Hard links make 100,000 real directory entries much faster than writing files;
        # a fresh source every 50,000 stays under the file system's link limit.
        if i % 50_000 == 0:
            source = write(folder / f"source_{i}.png", png((1, 1)))
        os.link(source, flat / f"img_{i:06d}.png")
    tracemalloc.start()
    try:
        seen = 0
        previous = ""
        held = 0
        for item in discover(flat):
            assert isinstance(item, ImageFile)
            assert item.rel > previous
            previous = item.rel
            seen += 1
            if seen == 1:
                held, _ = tracemalloc.get_traced_memory()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == count
    # Sorting the names of one directory takes about 100 bytes each for a moment (a list of
    # strings); nothing per image.
    assert peak < 25_000_000, f"peak {peak:,} bytes"
    # For the rest of the walk they are held packed: 15 bytes for "img_000001.png" and its
    # separator, where the list would keep about 80.
    assert held < 25 * count, f"held {held:,} bytes while walking"


# ----------------------------------------------------------------------------- prepare


@pytest.mark.parametrize(
    ("fmt", "mime", "ext"),
    [
        ("PNG", "image/png", "png"),
        ("JPEG", "image/jpeg", "jpeg"),
        ("WEBP", "image/webp", "webp"),
        ("GIF", "image/gif", "gif"),
        ("BMP", "image/bmp", "bmp"),
        ("TIFF", "image/tiff", "tiff"),
    ],
)
def test_prepare_without_options_sends_original_bytes(
    tmp_path: Path, fmt: str, mime: str, ext: str
) -> None:
    data = encode(noise((30, 20)), fmt)
    path = write(tmp_path / "in.bin", data)
    prepared = prepare(image_file(path))
    assert prepared == Prepared(
        source=image_file(path),
        data=data,
        mime=mime,
        ext=ext,
        width=30,
        height=20,
        digest=hashlib.sha256(data).hexdigest(),
    )


def test_digest_is_of_the_original_bytes_whatever_is_sent(tmp_path: Path) -> None:
    path = write(tmp_path / "a.png", encode(noise((50, 40)), "PNG"))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert content_digest(path) == digest
    options: list[dict[str, Any]] = [{}, {"fmt": "jpeg"}, {"max_side": 10}, {"fmt": "webp"}]
    for kwargs in options:
        assert prepare(image_file(path), **kwargs).digest == digest


def test_content_digest_streams_large_files(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)
    path = write(tmp_path / "big.bin", data)
    assert content_digest(path) == hashlib.sha256(data).hexdigest()


def test_truncated_jpeg_is_an_input_error(tmp_path: Path) -> None:
    data = encode(noise((200, 150)), "JPEG", quality=95)
    path = write(tmp_path / "sub" / "x.jpg", data[: len(data) // 2])
    with pytest.raises(InputError) as info:
        prepare(image_file(path, "sub/x.jpg"))
    message = str(info.value)
    assert message.startswith("truncated or corrupt image (image file is truncated")
    assert message.endswith("Re-export it or remove it from the folder.")


@pytest.mark.parametrize("cut", ["half", "end"])
def test_truncated_png_is_an_input_error(tmp_path: Path, cut: str) -> None:
    data = encode(noise((120, 80)), "PNG")
    # "end" keeps every pixel row and loses only the trailing checksum and IEND chunk.
    kept = data[: len(data) // 2] if cut == "half" else data[:-16]
    path = write(tmp_path / "p.png", kept)
    with pytest.raises(InputError, match=r"^truncated or corrupt image \("):
        prepare(image_file(path))


def test_garbage_after_a_valid_magic_is_an_input_error(tmp_path: Path) -> None:
    for name, magic in (
        ("g.png", b"\x89PNG\r\n\x1a\n"),
        ("g.jpg", b"\xff\xd8\xff\xe0"),
        ("g.webp", b"RIFF\x10\x00\x00\x00WEBPVP8 "),
    ):
        path = write(tmp_path / name, magic + os.urandom(200))
        with pytest.raises(InputError, match=r"^truncated or corrupt image"):
            prepare(image_file(path))


def test_non_image_passed_to_prepare_is_an_input_error(tmp_path: Path) -> None:
    path = write(tmp_path / "t.png", "plain text")
    with pytest.raises(InputError, match=r"^not an image \(content is text\)"):
        prepare(image_file(path))
    empty = write(tmp_path / "e.png", b"")
    with pytest.raises(InputError, match=r"^empty file"):
        prepare(image_file(empty))


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"^cannot read it \(no such file"):
        prepare(image_file(tmp_path / "gone.png"))


def test_decompression_bomb_is_caught_from_the_header(tmp_path: Path) -> None:
    path = write(tmp_path / "bomb.png", png_header_only(30000, 30000))
    assert path.stat().st_size < 200
    with pytest.raises(InputError) as info:
        prepare(image_file(path))
    assert str(info.value).startswith(
        "image header claims 30000x30000 pixels, over the limit of 100,000,000 pixels"
    )
    assert "Check the file" in str(info.value)


def test_pixel_limit_is_ours_not_pillows(tmp_path: Path) -> None:
    # 95M pixels is over Pillow's own warning threshold (~89M) but under our default limit:
    # no DecompressionBombWarning may escape (warnings are errors here); the file goes on to
    # be decoded, and fails for what it is, a header without pixel data.
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < 95_000_000
    path = write(tmp_path / "big.png", png_header_only(9500, 10000))
    with pytest.raises(InputError, match="truncated or corrupt image"):
        prepare(image_file(path))
    small = write(tmp_path / "small.png", png((100, 100)))
    with pytest.raises(InputError, match="100x100 pixels, over the limit of 5,000 pixels"):
        prepare(image_file(small), max_pixels=5000)
    assert prepare(image_file(small), max_pixels=10_000).width == 100


def _jpeg_with_orientation(size: tuple[int, int], orientation: int) -> bytes:
    im = noise(size)
    exif = im.getexif()
    exif[0x0112] = orientation
    exif[0x010F] = "CameraMaker"
    return encode(im, "JPEG", exif=exif.tobytes(), comment=b"secret comment")


def test_exif_orientation_is_applied_when_re_encoding(tmp_path: Path) -> None:
    path = write(tmp_path / "rot.jpg", _jpeg_with_orientation((40, 30), 6))
    untouched = prepare(image_file(path))
    assert (untouched.width, untouched.height) == (40, 30)
    options: list[dict[str, Any]] = [{"fmt": "png"}, {"fmt": "jpeg"}, {"max_side": 1000}]
    for kwargs in options:
        out = prepare(image_file(path), **kwargs)
        assert (out.width, out.height) == (30, 40)
        im = decoded(out.data)
        assert im.size == (30, 40)
        assert 0x0112 not in im.getexif()


def test_re_encoding_strips_metadata(tmp_path: Path) -> None:
    path = write(tmp_path / "meta.jpg", _jpeg_with_orientation((40, 30), 1))
    out = prepare(image_file(path), fmt="jpeg")
    assert b"CameraMaker" not in out.data
    assert b"secret comment" not in out.data
    assert len(decoded(out.data).getexif()) == 0


def test_icc_profile_survives_re_encoding_within_rgb(tmp_path: Path) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    path = write(tmp_path / "c.png", encode(noise((20, 20)), "PNG", icc_profile=icc))
    for fmt in ("jpeg", "png", "webp"):
        assert decoded(prepare(image_file(path), fmt=fmt).data).info.get("icc_profile") == icc


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [
        ((400, 200), 100, (100, 50)),
        ((200, 400), 100, (50, 100)),
        ((400, 200), 1000, (400, 200)),
        ((400, 200), 400, (400, 200)),
        ((3000, 2), 100, (100, 1)),
    ],
)
def test_max_side_downscales_and_never_upscales(
    tmp_path: Path, size: tuple[int, int], max_side: int, expected: tuple[int, int]
) -> None:
    path = write(tmp_path / "s.png", encode(noise(size), "PNG"))
    out = prepare(image_file(path), max_side=max_side)
    assert (out.width, out.height) == expected
    assert decoded(out.data).size == expected


def test_max_side_on_a_large_jpeg_keeps_the_exact_target_size(tmp_path: Path) -> None:
    path = write(tmp_path / "big.jpg", encode(noise((2000, 1500)), "JPEG"))
    out = prepare(image_file(path), max_side=300)
    assert (out.ext, out.width, out.height) == ("jpeg", 300, 225)
    assert decoded(out.data).size == (300, 225)


@pytest.mark.parametrize(
    ("fmt", "expected_ext"),
    [
        ("PNG", "png"),
        ("JPEG", "jpeg"),
        ("WEBP", "png"),
        ("GIF", "png"),
        ("BMP", "png"),
        ("TIFF", "png"),
    ],
)
def test_max_side_alone_keeps_png_and_jpeg_and_turns_others_into_png(
    tmp_path: Path, fmt: str, expected_ext: str
) -> None:
    path = write(tmp_path / "in.bin", encode(noise((64, 48)), fmt))
    out = prepare(image_file(path), max_side=32)
    assert (out.ext, out.mime) == (expected_ext, f"image/{expected_ext}")
    assert decoded(out.data).format == expected_ext.upper()
    assert (out.width, out.height) == (32, 24)


def test_rgba_to_jpeg_flattens_onto_white(tmp_path: Path) -> None:
    im = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    im.paste((255, 0, 0, 255), (0, 0, 16, 16))
    path = write(tmp_path / "a.png", encode(im, "PNG"))
    out = prepare(image_file(path), fmt="jpg")
    assert (out.ext, out.mime) == ("jpeg", "image/jpeg")
    result = decoded(out.data)
    assert result.mode == "RGB"
    assert all(c > 240 for c in pixel(result, 31, 31))  # transparent became white
    red = pixel(result, 4, 4)
    assert red[0] > 200 and red[1] < 80


def test_palette_with_transparency_to_jpeg(tmp_path: Path) -> None:
    im = Image.new("P", (8, 8), 0)
    im.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    im.putpixel((1, 1), 1)
    path = write(tmp_path / "p.gif", encode(im, "GIF", transparency=0))
    result = decoded(prepare(image_file(path), fmt="jpeg").data)
    assert result.mode == "RGB"
    assert all(c > 240 for c in pixel(result, 7, 7))


def test_webp_keeps_alpha(tmp_path: Path) -> None:
    im = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    im.putpixel((5, 5), (0, 255, 0, 255))
    path = write(tmp_path / "a.png", encode(im, "PNG"))
    out = prepare(image_file(path), fmt="webp")
    assert (out.ext, out.mime) == ("webp", "image/webp")
    result = decoded(out.data)
    assert result.mode == "RGBA"
    assert pixel(result, 0, 0)[3] == 0
    assert pixel(result, 5, 5)[3] == 255


@pytest.mark.parametrize("mode", ["L", "LA", "1", "CMYK", "I;16", "P", "RGB"])
def test_every_common_mode_converts_to_every_format(tmp_path: Path, mode: str) -> None:
    fmt = "TIFF" if mode == "CMYK" else "PNG"
    path = write(tmp_path / "m.bin", encode(Image.new(mode, (9, 7)), fmt))
    for target in ("png", "jpeg", "webp"):
        out = prepare(image_file(path), fmt=target, max_side=5)
        assert decoded(out.data).size == (5, 4)


def test_jpeg_re_encode_is_a_real_re_encode(tmp_path: Path) -> None:
    data = encode(noise((64, 64)), "JPEG", quality=50)
    path = write(tmp_path / "q.jpg", data)
    out = prepare(image_file(path), fmt="jpeg")
    assert out.data != data
    assert len(out.data) > len(data)  # quality 92 on noise costs more than quality 50


def test_bad_options_are_usage_errors(tmp_path: Path) -> None:
    path = write(tmp_path / "a.png", png())
    with pytest.raises(UsageError, match="unknown image format 'gif'"):
        prepare(image_file(path), fmt="gif")
    with pytest.raises(UsageError, match="max side must be a positive"):
        prepare(image_file(path), max_side=0)


def test_animated_gif_keeps_first_frame_on_re_encode(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (6, 6), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    path = write(tmp_path / "anim.gif", buf.getvalue())
    assert prepare(image_file(path)).data == buf.getvalue()
    first = decoded(prepare(image_file(path), fmt="png").data).convert("RGB")
    assert pixel(first, 0, 0) == (255, 0, 0)


def test_files_that_are_no_image_by_name_or_content_are_told_apart(folder: Path) -> None:
    write(folder / "a.png", png())
    write(folder / "README.txt", "how these photos were taken")
    write(folder / "specs.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    write(folder / "empty.log", b"")
    write(folder / "Makefile", "all:\n\ttrue\n")
    # Named like images: the user meant them as images, so they stay failures.
    write(folder / "fake.png", "plain text")
    write(folder / "empty.JPG", b"")
    write(folder / "photo.heic", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic")
    found = {i.rel: i for i in discover(folder)}
    assert isinstance(found["a.png"], ImageFile)
    strays = {rel for rel, i in found.items() if isinstance(i, Skipped) and i.not_image}
    assert strays == {"README.txt", "specs.pdf", "empty.log", "Makefile"}
    failures = {rel for rel, i in found.items() if isinstance(i, Skipped) and not i.not_image}
    assert failures == {"fake.png", "empty.JPG", "photo.heic"}
    assert found["README.txt"] == Skipped("README.txt", "not an image (content is text)", True)
    assert found["specs.pdf"].reason == "not an image (content is PDF)"  # type: ignore[union-attr]
