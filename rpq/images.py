"""Find input images under a folder, check them, and prepare the bytes to send."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from rpq.errors import InputError, UsageError

if TYPE_CHECKING:
    # Pillow is imported inside the functions that need it, so importing this module (and
    # running `rpq --help`) stays fast.
    from PIL import Image

# --------------------------------------------------------------------------- discovery

# Bytes read from each file to tell images from everything else.
SNIFF_BYTES = 32

_BMP_DIB_HEADER_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}


@dataclass(frozen=True)
class ImageFile:
    """An image found under the batch root."""

    path: Path  # absolute; a symlink stays the link's own path
    rel: str  # POSIX path relative to the batch root, e.g. "sub/dir/a b.jpg"


@dataclass(frozen=True)
class Skipped:
    """An entry under the batch root that will not be sent, and why.

    `not_image`: neither its content nor its name is an image's (a README.txt, a PDF): it is
    listed and counted apart, never a failure. A file named like an image whose content is
    not one (text named .png, an empty .jpg) and an entry that cannot be read stay failures.
    """

    rel: str
    reason: str
    not_image: bool = False


#: Names that say "image", whether or not rpq can read that format: such a file whose
#: content is no image rpq knows is a failure, not a stray file.
IMAGE_SUFFIXES = frozenset({
    ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff",
    ".heic", ".heif", ".avif", ".jxl", ".jp2", ".j2k", ".ico", ".psd", ".svg", ".dng", ".cr2",
    ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf",
})


def named_like_an_image(rel: str) -> bool:
    return os.path.splitext(rel)[1].lower() in IMAGE_SUFFIXES


class NotImages:
    """The files a batch skipped for not being images: all counted, the first `limit` listed,
    so memory stays flat however many there are. Thread-safe."""

    def __init__(self, limit: int = 1000) -> None:
        self.count = 0
        self.files: list[dict[str, str]] = []
        self._limit = limit
        self._lock = threading.Lock()

    def add(self, item: Skipped) -> None:
        with self._lock:
            self.count += 1
            if len(self.files) < self._limit:
                self.files.append({"file": item.rel, "reason": item.reason})

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"count": self.count, "files": sorted(self.files, key=lambda f: f["file"])}


def no_image_found(where: str, include: Sequence[str], exclude: Sequence[str],
                   not_images: int) -> str:
    """The message for an input with no image to send (exit 2)."""
    filters = "".join(f" --include {p!r}" for p in include) + \
        "".join(f" --exclude {p!r}" for p in exclude)
    parts = [f"no image found in {where}"]
    if filters:
        parts.append(f" matching{filters}")
    if not_images:
        parts.append(f" ({not_images} file(s) that are not images)")
    hint = "Check the folder and the --include/--exclude patterns" if filters else \
        "Check that this is the folder that holds your images"
    return "".join(parts) + f". {hint}; nothing was sent."


def sniff(head: bytes) -> str | None:
    """The image kind ("png", "jpeg", "webp", "gif", "bmp", "tiff") of a file's first bytes
    (an input's, or a result's before it is decoded and saved); BigTIFF is "tiff" too."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    # "BM" alone is too weak (any text can start with it); the DIB header size pins it down.
    if head[:2] == b"BM" and len(head) >= 18:
        (dib_size,) = struct.unpack_from("<I", head, 14)
        if dib_size in _BMP_DIB_HEADER_SIZES:
            return "bmp"
    return None


def _describe_non_image(head: bytes) -> str:
    if head.startswith(b"%PDF"):
        return "not an image (content is PDF)"
    if head.startswith(b"PK\x03\x04"):
        return "not an image (content is a ZIP archive)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # The sniff window may cut a multi-byte character in half.
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            text = ""
    if text and all(c.isprintable() or c in "\t\r\n\f" for c in text):
        return "not an image (content is text)"
    return "not an image (unrecognised content: " + head[:8].hex(" ") + ")"


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    text = exc.strerror or exc.__class__.__name__
    return text[:1].lower() + text[1:]


def _matches(patterns: Sequence[str], rel: str, name: str) -> bool:
    for pattern in patterns:
        target = rel if "/" in pattern else name
        if fnmatchcase(target.lower(), pattern.lower()):
            return True
    return False


def discover(
    root: Path,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    recursive: bool = True,
) -> Iterator[ImageFile | Skipped]:
    """Stream the images under `root`, and the entries that cannot be used, in a stable order.

    Order: depth-first; the entries of each directory are sorted by name (code point order),
    with files and directories interleaved, so a directory's contents come out at the place
    where its name sorts. Directories are listed one at a time, when the walk reaches them;
    what is held is the sorted names still to visit in each directory on the current path,
    plus the identity of each directory walked so far (to enter none twice).

    Patterns (fnmatch, case-insensitive): a pattern without "/" is matched against the entry's
    name, so "*.jpg" matches at any depth; a pattern with "/" is matched against the whole
    relative path ("raw/*.png"; "*" also crosses "/"). A file is kept when it matches some
    `include` pattern (or there are none) and no `exclude` pattern. `exclude` also prunes
    directories whose name or path matches. Filtered-out and hidden (".name") entries are
    dropped silently; everything else that is not a usable image comes back as `Skipped`.

    Images are recognised by content, not extension. Symlinks are followed; a directory that
    was already entered is not entered again (`Skipped` "symlink loop" when it is one of its
    own ancestors). Raises UsageError at once when `root` is missing or not a directory.
    """
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise UsageError(f"{root} does not exist. Pass a folder of images.") from None
    except OSError as exc:
        raise UsageError(f"cannot open {root} ({_os_reason(exc)}).") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{root} is not a directory. Pass a folder of images.")
    return _walk(
        os.path.abspath(root), (st.st_dev, st.st_ino), tuple(include), tuple(exclude), recursive
    )


def _list_names(path: str) -> Iterator[str]:
    """A directory's entry names in sorted order, listed now, handed out one at a time.

    The names of a directory must all be read before the first can be given in order; they
    are kept as one string (a name cannot hold a NUL), about a fifth of the memory of a list
    of strings: 3 MB less for a folder of 50,000 images, held for the whole walk.
    """
    with os.scandir(path) as it:
        packed = "\0".join(sorted(entry.name for entry in it))
    return _unpacked(packed)


def _unpacked(packed: str) -> Iterator[str]:
    start, end = 0, len(packed)
    while start < end:
        stop = packed.find("\0", start)
        stop = end if stop < 0 else stop
        yield packed[start:stop]
        start = stop + 1


def _walk(
    root: str,
    root_key: tuple[int, int],
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    recursive: bool,
) -> Iterator[ImageFile | Skipped]:
    try:
        names = _list_names(root)
    except OSError as exc:
        raise UsageError(f"cannot list {root} ({_os_reason(exc)}).") from None

    # One frame per open directory: (path, rel prefix, remaining names, identity).
    stack: list[tuple[str, str, Iterator[str], tuple[int, int]]] = [
        (root, "", names, root_key)
    ]
    del names
    ancestors = {root_key}
    entered: dict[tuple[int, int], str] = {root_key: "."}

    while stack:
        dir_path, prefix, remaining, key = stack[-1]
        name = next(remaining, None)
        if name is None:
            stack.pop()
            ancestors.discard(key)
            continue
        if name.startswith("."):
            continue
        path = os.path.join(dir_path, name)
        rel = prefix + name
        try:
            st = os.stat(path)
        except OSError as exc:
            yield _stat_failure(path, rel, exc)
            continue

        if stat.S_ISDIR(st.st_mode):
            if not recursive or _matches(exclude, rel, name):
                continue
            dir_key = (st.st_dev, st.st_ino)
            seen = _walked_before(rel, dir_key, ancestors, entered)
            if seen is not None:
                yield seen
                continue
            try:
                names = _list_names(path)
            except OSError as exc:
                yield Skipped(rel, "unreadable: " + _os_reason(exc))
                continue
            entered[dir_key] = rel
            ancestors.add(dir_key)
            stack.append((path, rel + "/", names, dir_key))
            del names
            continue

        if include and not _matches(include, rel, name):
            continue
        if not _matches(exclude, rel, name):
            yield _file_entry(path, rel, st)


def _walked_before(
    rel: str,
    dir_key: tuple[int, int],
    ancestors: set[tuple[int, int]],
    entered: dict[tuple[int, int], str],
) -> Skipped | None:
    """Why a directory is not entered again (a loop, or a second way in), else None."""
    if dir_key in ancestors:
        return Skipped(rel, "symlink loop")
    if dir_key in entered:
        return Skipped(rel, f"same directory as {entered[dir_key]!r}, already walked")
    return None


def _stat_failure(path: str, rel: str, exc: OSError) -> Skipped:
    """Why a listed name could not be looked at."""
    if exc.errno == errno.ENOENT and os.path.islink(path):
        return Skipped(rel, "broken symlink")
    if exc.errno == errno.ENOENT:
        return Skipped(rel, "vanished while listing")
    if exc.errno == errno.ELOOP:
        return Skipped(rel, "symlink loop")
    return Skipped(rel, "unreadable: " + _os_reason(exc))


def _file_entry(path: str, rel: str, st: os.stat_result) -> ImageFile | Skipped:
    """A listed non-directory that passed the filters: an image, or why it is skipped."""
    if not stat.S_ISREG(st.st_mode):
        return Skipped(rel, "not a regular file")
    if st.st_size == 0:
        return Skipped(rel, "empty file", not_image=not named_like_an_image(rel))
    return _sniff_file(path, rel)


def _sniff_file(path: str, rel: str) -> ImageFile | Skipped:
    try:
        # O_NONBLOCK: if the file was swapped for a FIFO since stat(), open must not hang.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        return Skipped(rel, "unreadable: " + _os_reason(exc))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return Skipped(rel, "not a regular file")
        head = os.read(fd, SNIFF_BYTES)
    except OSError as exc:
        return Skipped(rel, "unreadable: " + _os_reason(exc))
    finally:
        os.close(fd)
    if not head:
        return Skipped(rel, "empty file", not_image=not named_like_an_image(rel))
    if sniff(head) is None:
        return Skipped(rel, _describe_non_image(head), not_image=not named_like_an_image(rel))
    return ImageFile(Path(path), rel)


# --------------------------------------------------------------------------- preparation

FORMATS = ("png", "jpeg", "webp")
JPEG_QUALITY = 92
WEBP_QUALITY = 90

_MIME = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
}
# Our kind -> the Pillow plugin that decodes it.
_PIL_FORMAT = {
    "png": "PNG",
    "jpeg": "JPEG",
    "webp": "WEBP",
    "gif": "GIF",
    "bmp": "BMP",
    "tiff": "TIFF",
}
# Modes whose ICC profile still describes the pixels after a conversion within the family.
_COLOUR_FAMILY = {"RGB": "rgb", "RGBA": "rgb", "RGBX": "rgb", "P": "rgb", "L": "grey", "LA": "grey"}


@dataclass(frozen=True)
class Prepared:
    """The bytes to send for one image, and what they are."""

    source: ImageFile
    data: bytes  # original bytes when no re-encode was asked
    mime: str  # "image/png", "image/jpeg", "image/webp", ...
    ext: str  # "png" | "jpeg" | "webp" | "gif" | "bmp" | "tiff"
    width: int  # of `data` as stored: EXIF orientation is applied only when re-encoding
    height: int
    digest: str  # sha256 hex of the ORIGINAL file bytes


# Chunks read to hash a file: under map_large_blocks' threshold, so each comes from the heap
# and is reused, instead of being mapped and faulted in afresh.
_HASH_CHUNK = 128 << 10


class _Digests:
    """The digests of the files hashed lately, by identity and change time, so `prepare`
    need not hash a file again that the batch hashed just before (for its journal key).

    A file written since (new size, mtime or ctime; the kernel sets ctime on every write) is
    a miss, hashed again. Bounded; thread-safe.
    """

    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._known: dict[tuple[int, ...], str] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(st: os.stat_result) -> tuple[int, ...]:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def get(self, st: os.stat_result) -> str | None:
        with self._lock:
            return self._known.get(self.key(st))

    def put(self, st: os.stat_result, digest: str) -> None:
        with self._lock:
            if len(self._known) >= self._size:
                del self._known[next(iter(self._known))]  # the oldest
            self._known[self.key(st)] = digest


_digests = _Digests()


def content_digest(path: Path) -> str:
    """sha256 hex of a file's bytes, read in chunks."""
    with open(path, "rb") as f:
        before = os.fstat(f.fileno())
        digest = _hash_stream(f)
        after = os.fstat(f.fileno())
    if _Digests.key(before) == _Digests.key(after):  # not written to while it was read
        _digests.put(after, digest)
    return digest


def _hash_stream(f: BinaryIO) -> str:
    """sha256 hex of an open file's bytes, from its start."""
    f.seek(0)
    h = hashlib.sha256()
    while chunk := f.read(_HASH_CHUNK):
        h.update(chunk)
    return h.hexdigest()


def _read_all(f: BinaryIO) -> tuple[bytes, str | None]:
    """An open file's bytes, and their digest if this process hashed the file as it is now."""
    before = os.fstat(f.fileno())
    data = f.read()
    after = os.fstat(f.fileno())
    if _Digests.key(before) != _Digests.key(after):
        return data, None
    return data, _digests.get(after)


def _normalise_format(fmt: str | None) -> str | None:
    if fmt is None:
        return None
    low = fmt.lower().lstrip(".")
    low = "jpeg" if low == "jpg" else low
    if low not in FORMATS:
        raise UsageError(f"unknown image format {fmt!r}; use one of: {', '.join(FORMATS)}.")
    return low


def prepare(
    image: ImageFile,
    *,
    max_side: int | None = None,
    fmt: str | None = None,
    max_pixels: int = 100_000_000,
) -> Prepared:
    """Read one image, check that it decodes, and re-encode it when `max_side` or `fmt` asks.

    With neither, the original bytes are sent untouched (still decoded once, to catch
    truncated or corrupt files; a JPEG at 1/8 scale, see check_whole). With either, EXIF
    orientation is applied, the long side is brought down to `max_side` (never up), metadata
    other than a still-valid ICC colour profile is dropped, and the result is encoded as `fmt`
    ("png" | "jpeg" | "webp"; default: png stays png, jpeg stays jpeg, anything else becomes
    png). Animated images keep only
    their first frame when re-encoded. Raises InputError saying what is wrong and what to do
    (the caller names the file).
    """
    target = _normalise_format(fmt)
    if max_side is not None and max_side < 1:
        raise UsageError(f"max side must be a positive number of pixels, not {max_side}.")
    with _open_image(image.path) as f:
        try:
            head = f.read(SNIFF_BYTES)
            if sniff(head) == "jpeg" and (max_side is not None or target is not None):
                return _reencode_file(image, f, target or "jpeg", max_side, max_pixels)
            f.seek(0)
            original, digest = _read_all(f)
        except OSError as exc:
            raise _cannot_read(exc) from None
    if not original:
        raise InputError("empty file. Remove it from the folder.")
    if digest is None:
        digest = hashlib.sha256(original).hexdigest()
    kind = sniff(original[:SNIFF_BYTES])
    if kind is None:
        raise InputError(
            f"{_describe_non_image(original[:SNIFF_BYTES])}. "
            "Remove it from the folder or exclude it."
        )

    im = _open_checked(io.BytesIO(original), kind, max_pixels)
    try:
        if kind == "png":
            # Pillow's decoder stops once it has every row, so a PNG cut after its last pixels
            # (no IEND, broken checksum) would pass; verify() walks every chunk and its CRC.
            _verify_png(original)
        if max_side is None and target is None:
            width, height = im.size
            check_whole(im)
            return Prepared(image, original, _MIME[kind], kind, width, height, digest)
        # The pixels are all that is needed from here: the file's bytes go now, not at return.
        del original
        out_kind = target or (kind if kind in ("png", "jpeg") else "png")
        data, width, height = _reencode(im, out_kind, max_side)
    finally:
        im.close()
    return Prepared(image, data, _MIME[out_kind], out_kind, width, height, digest)


def _open_image(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise _cannot_read(exc) from None


def _cannot_read(exc: OSError) -> InputError:
    return InputError(
        f"cannot read it ({_os_reason(exc)}). "
        "Check its permissions or remove it from the folder."
    )


def _reencode_file(
    image: ImageFile, f: BinaryIO, out_kind: str, max_side: int | None, max_pixels: int
) -> Prepared:
    """`prepare` of a JPEG to re-encode, decoded straight from its open file.

    The file's bytes are never held whole (libjpeg reads them in 64 KB chunks as it decodes),
    and its digest is the one the batch made for its journal key when the file is unchanged
    since: hashed again otherwise.
    """
    try:
        before = os.fstat(f.fileno())
        digest = _digests.get(before) or _hash_stream(f)
        f.seek(0)
    except OSError as exc:
        raise _cannot_read(exc) from None
    im = _open_checked(f, "jpeg", max_pixels)
    try:
        data, width, height = _reencode(im, out_kind, max_side)
    finally:
        im.close()
    try:
        if _Digests.key(os.fstat(f.fileno())) != _Digests.key(before):
            digest = _hash_stream(f)  # written to meanwhile: at least the digest is current
    except OSError as exc:
        raise _cannot_read(exc) from None
    return Prepared(image, data, _MIME[out_kind], out_kind, width, height, digest)


def prepare_cost(image: ImageFile, *, max_side: int | None = None, fmt: str | None = None) -> int:
    """About how many bytes `prepare` and the rendered request hold at their peak.

    From the file's size and its header (a few KB read): the file's bytes, the decoded
    pixels at the scale `prepare` decodes them, the re-encoded image and the request body
    (base64, then the JSON around it). 0 when the header cannot be read: `prepare` will
    fail fast on that file.
    """

    try:
        size = image.path.stat().st_size
        with open(image.path, "rb") as f:
            kind = sniff(f.read(SNIFF_BYTES))
            if kind is None:
                return 0
            f.seek(0)
            with _plugin(kind)(f, "") as im:
                width, height = im.size
                mode = im.mode
                progressive = bool(im.info.get("progressive"))
    except Exception:  # unreadable or corrupt: prepare says why
        return 0
    # A progressive JPEG keeps every DCT coefficient until the last scan: 2 bytes a sample.
    coefficients = width * height * 3 if progressive else 0
    if max_side is None and fmt is None:
        scale = 8 if kind == "jpeg" and mode in _DRAFT_MODES else 1
        pixels = (width // scale + 1) * (height // scale + 1) * _bytes_per_pixel(
            "L" if scale > 1 else mode)
        return size + coefficients + pixels + size * 8 // 3
    side = max(width, height)
    target = min(side, max_side or side)
    scale = next((s for s in (8, 4, 2) if kind == "jpeg" and side // s >= _near(target)), 1)
    decoded = (width // scale + 1) * (height // scale + 1) * 4
    out_pixels = (width * target // side + 1) * (height * target // side + 1) * 4
    out_kind = _normalise_format(fmt) or (kind if kind in ("png", "jpeg") else "png")
    # Lossless output can be as large as its pixels; JPEG at quality 92, a quarter of them.
    encoded = out_pixels // 4 if out_kind == "jpeg" else out_pixels
    # First the decoded and the resized pixels, then those and the encoded image, its
    # base64 and the body around it.
    return size + coefficients + max(decoded + out_pixels, out_pixels + encoded * 11 // 3)


def _bytes_per_pixel(mode: str) -> int:
    return {"1": 1, "L": 1, "P": 1, "I;16": 2, "LA": 2, "PA": 2}.get(mode, 4)


# JPEG modes libjpeg can decode at reduced scale (draft).
_DRAFT_MODES = frozenset({"RGB", "L", "CMYK", "YCbCr"})


def check_whole(im: Image.Image) -> None:
    """Decode `im` just far enough to prove every byte of it is there and decodes.

    A JPEG is decoded at 1/8 scale and in grey: libjpeg still reads and entropy-decodes the
    whole stream (so a truncated file fails exactly as at full size) but skips most of the
    inverse DCT and colour work, and holds 1/64 of the pixels. Other formats decode fully.
    The pixels are released before returning.
    """
    draft_for_check(im)
    try:
        _load(im)
    finally:
        im.close()


def draft_for_check(im: Image.Image) -> None:
    """Ask a JPEG to decode at 1/8 scale in grey, enough to check it is whole (not loaded yet)."""
    if im.format in ("JPEG", "MPO") and im.mode in _DRAFT_MODES:
        # "L" only takes effect for a colour (YCbCr) stream; size (1, 1) asks for the
        # smallest scale libjpeg offers, 1/8.
        im.draft("L", (1, 1))


def _corrupt(exc: BaseException) -> InputError:
    detail = str(exc) or exc.__class__.__name__
    return InputError(
        f"truncated or corrupt image ({detail}). Re-export it or remove it from the folder."
    )


def _too_big(size: tuple[int, int] | None, max_pixels: int) -> InputError:
    what = f"{size[0]}x{size[1]} pixels" if size else "too many pixels"
    return InputError(
        f"image header claims {what}, over the limit of {max_pixels:,} pixels "
        "(possibly a decompression bomb). Check the file; if it is genuine, downscale it "
        "before the batch."
    )


def _open_checked(fp: BinaryIO, kind: str, max_pixels: int) -> Image.Image:
    """Open `fp` with the plugin for `kind`, reading only the header, and check its size."""
    from PIL import Image

    try:
        factory = _plugin(kind)
    except KeyError:
        raise InputError(
            f"this Pillow cannot decode {kind} images. "
            "Install a Pillow built with it, or convert the file."
        ) from None
    # The plugin factory is what Image.open calls; calling it directly skips Pillow's own
    # process-wide MAX_IMAGE_PIXELS check, which warns (an error under strict warning
    # filters) at a different threshold than ours. Our limit is applied just below.
    try:
        im = factory(fp, "")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_big(None, max_pixels) from None
    except Exception as exc:
        raise _corrupt(exc) from None
    width, height = im.size
    if width * height > max_pixels:
        im.close()
        raise _too_big((width, height), max_pixels)
    return im


def _plugin(kind: str) -> Any:
    """Pillow's opener for `kind` (KeyError when this Pillow has none)."""
    from PIL import Image

    # preinit() loads the common plugins only; init() imports every one (slow at start-up).
    Image.preinit()
    if _PIL_FORMAT[kind] not in Image.OPEN:
        Image.init()
    return Image.OPEN[_PIL_FORMAT[kind]][0]


def _verify_png(data: bytes) -> None:
    from PIL import PngImagePlugin

    try:
        with PngImagePlugin.PngImageFile(io.BytesIO(data)) as im:
            im.verify()
    except Exception as exc:
        raise _corrupt(exc) from None


def _load(im: Image.Image) -> None:
    from PIL import Image

    try:
        im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(
            f"{exc} Check the file; if it is genuine, re-export it at a smaller size."
        ) from None
    except Exception as exc:
        raise _corrupt(exc) from None


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def _normalise_mode(im: Image.Image, out_kind: str) -> Image.Image:
    """`im` in a mode `out_kind` can store (itself when it already is; a copy is never
    needed, since every later step makes a new image); alpha is flattened onto white for JPEG.
    """
    from PIL import Image

    alpha = _has_alpha(im)
    if out_kind == "jpeg":
        if alpha:
            rgba = im.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            rgba.close()
            return flat
        return im if im.mode in ("RGB", "L") else im.convert("RGB")
    if (
        out_kind == "png"
        and im.mode in ("RGB", "RGBA", "L", "LA", "I;16")
        and not (alpha and im.mode in ("RGB", "L"))
    ):
        return im
    if alpha:
        return im.convert("RGBA")
    if out_kind == "png" and im.mode == "1":
        return im.convert("L")
    return im.convert("RGB")


def _reencode(
    im: Image.Image, out_kind: str, max_side: int | None
) -> tuple[bytes, int, int]:

    # Read before decoding: TIFF keeps orientation in tags that do not survive a conversion.
    orientation = im.getexif().get(0x0112, 1)
    icc = im.info.get("icc_profile")
    src_mode = im.mode
    width, height = im.size
    new_size = None
    if max_side is not None and max(width, height) > max_side:
        scale = max_side / max(width, height)
        new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if im.format in ("JPEG", "MPO"):
            # libjpeg decodes at 1/2, 1/4 or 1/8 scale: its scaled inverse DCT averages each
            # block, a clean downscale, and the resize below finishes the job. A scale that
            # lands at most 1/32 under the target is sent as it is (see _near): a 12 MP phone
            # photo, 4032 x 3024, becomes 2016 x 1512 for 2048, with no resize at all. The
            # whole stream is still read, so truncation is caught as at full size.
            im.draft(None, (_near(new_size[0]), _near(new_size[1])))
    _load(im)

    frame = _normalise_mode(im, out_kind)
    if frame is not im:
        im.close()  # the decoded original is not needed once converted
    if new_size is not None and max(frame.size) > max(new_size):  # over --max-side still
        frame = _shrink(frame, new_size)
    frame = _upright(frame, orientation)

    keep_icc = (
        icc is not None
        and _COLOUR_FAMILY.get(src_mode) is not None
        and _COLOUR_FAMILY.get(src_mode) == _COLOUR_FAMILY.get(frame.mode)
    )
    frame.info = {}  # strip EXIF, XMP, text chunks and comments
    options: dict[str, object] = {"icc_profile": icc if keep_icc else None}
    if out_kind == "jpeg":
        options["quality"] = JPEG_QUALITY
    elif out_kind == "webp":
        options["quality"] = WEBP_QUALITY
    buf = io.BytesIO()
    try:
        frame.save(buf, format=out_kind.upper(), **options)
        return buf.getvalue(), frame.width, frame.height
    finally:
        frame.close()


def _near(target: int) -> int:
    """The fewest pixels a scaled JPEG decode may have for `target`: 1/32 under it.

    A scale that lands there is sent as it is: the long side stays within --max-side, and a
    scaled decode holds as much detail as any resize of the full decode to its size would
    (closer to LANCZOS than a bilinear shrink of the full decode is), for half the CPU of
    decoding in full and shrinking. Scaling it up the last 3% would add pixels, not detail,
    for as much CPU again. Further short, the lost detail would show.
    """
    return max(1, target - target // 32)


def _shrink(frame: Image.Image, new_size: tuple[int, int]) -> Image.Image:
    """frame resized to new_size; frame is closed."""
    from PIL import Image

    if frame.width < 2 * new_size[0]:
        # Within a factor of 2 (what libjpeg's scaled decode leaves), Pillow's bilinear
        # filter (widened by the factor) averages every source pixel, at half the CPU of
        # LANCZOS: on a 12 MP photo, this step would otherwise cost as much as decoding.
        # (BOX, area averaging, would save a fifth of this step's CPU, but lands 7 dB of PSNR
        # further from a LANCZOS resize of the full decode than bilinear does: 38 against
        # 46 dB on a 12 MP photo.) The two passes run one at a time, the decoded image freed
        # between them: the same pixels out, a third less memory held at the peak.
        wide = frame.resize((new_size[0], frame.height), Image.Resampling.BILINEAR)
        frame.close()
        smaller = wide.resize(new_size, Image.Resampling.BILINEAR)
        wide.close()
        return smaller
    # Box-reduce to within 3x of the target first: about LANCZOS quality, far less CPU.
    smaller = frame.resize(new_size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    frame.close()
    return smaller


def _upright(frame: Image.Image, orientation: int) -> Image.Image:
    """frame turned as its EXIF orientation says; frame is closed if a new one is made."""
    from PIL import Image

    method = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(orientation)
    if method is None:
        return frame
    turned = frame.transpose(method)
    frame.close()
    return turned
