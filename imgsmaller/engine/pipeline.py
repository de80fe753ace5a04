"""compress(): decode an upload, then the target search or auto mode, into a Result. No Flask, no SQL, no files.

Pipeline: sniff + validate + decode the first frame (decode.py) -> apply EXIF
orientation, 8-bit RGB(A), keep the ICC profile, drop all other metadata ->
flatten on white for JPEG -> either fit a byte target (target.py: quality
search, then downscale below a quality floor) or auto (auto.py: the smallest
encode with SSIMULACRA2 >= AUTO_MIN_SCORE) -> Result with the score
(quality.py) and its warnings (notes.py). It is thread-safe: no
process-global state is touched per call.

Options (issue 13): `resize` (resize.py) scales or crops the oriented picture before
either mode, and the upload itself is then no answer (it has the wrong size);
`keep_metadata` (metadata.py) carries EXIF/XMP into JPEG, PNG and WebP results by byte
insertion after the encode (AVIF: the chosen quality encoded again with them), the
searches and the rule below running on the budget less those bytes, so a target and the
rule still hold for the file with its metadata.

The rule on top (issue 9): JPEG, WebP and AVIF results, and results in the
upload's own format, are never larger than the upload. A target at or above
the upload's size in its own format gives the upload minus its metadata; other
targets above the upload's size are searched with the upload's size instead;
auto's lossy results are kept within it by auto.py (at full size). The one
exception: a format none of whose files is that small (a 70-byte PNG as JPEG),
answered as asked, with a warning. PNG from a lossy upload tries auto's palette
first and may be larger than the upload, with a warning. `original` for a HEIC
or HEIF upload is a JPEG (browsers do not show HEIC), a conversion the rule does
not bind (issue 13): searched and scored as an explicit JPEG without the cap, and
warned of; an explicit output from HEIC keeps the rule.
"""

import time
from dataclasses import dataclass, field, replace
from functools import cached_property, partial

from imgsmaller.errors import InvalidRequestError, TargetUnreachableError

from .auto import AUTO_MIN_SCORE, encode_auto, palette_at_threshold
from .decode import check_output_limits, flatten, normalise, open_image
from .encoders import AvifEncoder
from .formats import is_conversion, output_format
from .metadata import LOSSY_FORMATS, attach, is_lossy, kept_metadata, overhead, parts, stripped_input
from .notes import METADATA_TOO_BIG, Outcome, warnings_for
from .quality import score_result
from .resize import apply as apply_resize
from .target import fit_target

UPLOAD_ITSELF = {"codec": "input-without-metadata", "lossless": True}
# A quality-90 palette PNG of a photo takes 0.6-1.5 bytes per pixel (Kodak): below
# this budget it cannot fit, so target mode does not try it first.
PALETTE_MIN_BYTES_PER_PIXEL = 0.25


@dataclass(frozen=True)
class Result:
    data: bytes
    format: str
    width: int
    height: int
    original_format: str
    original_width: int
    original_height: int
    original_bytes: int
    quality_score: float | None
    quality_metric: str = "ssimulacra2"
    encodes: int = 0
    settings: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Upload:
    """The decoded upload and what the rule needs to know about it."""

    image: object               # normalised (oriented, 8-bit, flattened for JPEG)
    icc: bytes | None
    fmt: str                    # the output format
    input_format: str
    input_bytes: int            # the budget the rule leaves the encodes: the upload's size less `extra`
    lossy: bool                 # the upload was lossily compressed
    strip: object               # () -> the upload minus its metadata when that shows the same picture, else None
    kept: object = None         # metadata.Kept: what keep_metadata carries into the result, or None
    extra: int = 0              # the bytes that adds (metadata.overhead)
    notes: tuple = ()           # warnings about the request's options
    converted: bool = False     # `original` of a HEIC/HEIF: JPEG, not held to the upload's size

    @cached_property
    def stripped(self):
        """Made when asked for, not held through the job's peaks (a copy of the upload: 4.6 MiB at 12 MP)."""
        return self.strip()


@dataclass
class Encoded:
    data: bytes
    size: tuple
    settings: dict
    encodes: int
    score: float | None
    target: int | None = None   # the budget searched with
    capped: bool = False        # that budget is the upload's size
    image: object = None        # the picture encoded, when not the upload's (downscaled to fit)


def compress(data, *, output="original", target_size=None, max_pixels, resize=None, keep_metadata="none"):
    """Compress one image; see the module docstring. Raises the errors of imgsmaller.errors.

    `resize`: a resize.Resize or None, applied after the EXIF orientation; `keep_metadata`:
    one of metadata.KEEP_METADATA."""
    started = time.perf_counter()
    upload, facts = _open(data, output, max_pixels, resize, keep_metadata)
    if target_size is None:
        encoded = _auto(upload, lambda: _open(data, output, max_pixels, resize, keep_metadata)[0].image)
    else:
        target = int(target_size)
        if target < 1:
            raise InvalidRequestError("target_size must be positive.")
        if upload.kept is not None and upload.extra > target // 2:
            upload = replace(upload, kept=None, input_bytes=len(data), extra=0, notes=(*upload.notes, METADATA_TOO_BIG))
        encoded = _for_target(upload, target - upload.extra)
    if upload.kept is not None:
        with_metadata = _with_metadata(upload, encoded)
        if len(with_metadata) <= len(encoded.data) + upload.extra:  # always, but for a surprise from libavif
            encoded.data = with_metadata
            encoded.settings["metadata"] = keep_metadata
        else:
            upload = replace(upload, notes=(*upload.notes, METADATA_TOO_BIG))
        if encoded.target is not None:
            encoded.target += upload.extra
    settings = encoded.settings
    settings["seconds"] = round(time.perf_counter() - started, 3)
    score = None if encoded.score is None else round(float(encoded.score), 2)
    outcome = Outcome(
        fmt=upload.fmt, input_format=facts.format, input_bytes=len(data), out_bytes=len(encoded.data),
        full_size=upload.image.size, size=encoded.size, target=encoded.target, capped=encoded.capped,
        score=score, min_score=AUTO_MIN_SCORE if target_size is None or encoded.capped else None,
        lossless=bool(settings.get("lossless")), converted=upload.converted)
    return Result(
        data=encoded.data, format=upload.fmt, width=encoded.size[0], height=encoded.size[1],
        original_format=facts.format, original_width=facts.width, original_height=facts.height,
        original_bytes=len(data), quality_score=score, encodes=encoded.encodes, settings=settings,
        warnings=warnings_for(outcome) + list(upload.notes))


def _with_metadata(upload, encoded):
    """The result's file with the kept metadata: inserted, or for AVIF the same encode carrying it."""
    if upload.fmt != "avif":
        return attach(encoded.data, upload.fmt, upload.kept, has_alpha=upload.image.mode == "RGBA")
    settings = encoded.settings
    encoder = AvifEncoder(encoded.image or upload.image, upload.icc, speed=settings["speed"],
                          subsampling=settings["subsampling"])
    exif, xmp = parts(upload.kept, "avif")
    encoded.encodes += 1
    return encoder.encode_with(settings["quality"], exif=exif, xmp=xmp)


def _open(data, output, max_pixels, resize=None, keep_metadata="none"):
    """Decode, normalise and resize the upload; what it keeps of its metadata. -> (Upload, Probe)"""
    decoded, facts = open_image(data, max_pixels=max_pixels)
    fmt = output_format(output, facts.format)
    check_output_limits(facts, fmt, resize)
    try:
        orientation = decoded.getexif().get(0x0112)
    except Exception:  # unreadable EXIF: normalise ignores it too
        orientation = None
    kept = kept_metadata(decoded, keep_metadata)
    image, icc = normalise(decoded)
    if image is decoded:
        # The pixels alone, free of the plugin object that decoded them: it keeps its file and
        # decoder while it lives (WebP's: two canvases and a copy of the frame, 8-12 bytes a pixel
        # for the whole job: +89 MiB at 12 MP, bench/memory.py).
        image = decoded._new(decoded.im)
        image.info = {}
    decoded.close()
    del decoded
    oriented_size = image.size
    image = apply_resize(image, resize)
    if fmt == "jpeg":
        image = flatten(image)
    strip = lambda: None  # noqa: E731
    if fmt == facts.format and image.size == oriented_size and not (resize and resize.crop_box(*oriented_size)):
        strip = partial(stripped_input, data, fmt, facts.frames, orientation)
    notes = ()
    extra = overhead(kept, fmt)
    if kept is not None and extra > len(data) // 2:
        kept, extra, notes = None, 0, (METADATA_TOO_BIG,)
    upload = Upload(image, icc, fmt, facts.format, len(data) - extra, is_lossy(data, facts.format), strip,
                    kept, extra, notes, converted=is_conversion(output, facts.format))
    return upload, facts


def _auto(upload, reopen):
    """Auto mode (auto.py keeps lossy results within the upload's size, unless it is a conversion). The picture
    may come back parked (pixels dropped, auto._Parking; `reopen` decodes it again): only its size and mode."""
    out, settings, encodes, score = encode_auto(
        upload.image, upload.icc, upload.fmt, input_format=upload.input_format,
        input_bytes=None if upload.converted else upload.input_bytes,
        fallback=lambda: upload.stripped, lossy_upload=upload.lossy, reopen=reopen)
    return Encoded(out, upload.image.size, settings, encodes, score, capped=bool(settings.get("capped_by_input")))


def _for_target(upload, target):
    """Target mode: the upload itself when it fits in its own format; lossy results capped at the upload's size."""
    same = upload.fmt == upload.input_format
    if same and target >= upload.input_bytes and upload.stripped is not None \
            and len(upload.stripped) <= upload.input_bytes:
        # Nothing that fits looks better than the upload itself.
        return Encoded(upload.stripped, upload.image.size, dict(UPLOAD_ITSELF), 0, 100.0, target)
    if (same or upload.fmt in LOSSY_FORMATS) and target > upload.input_bytes and not upload.converted:
        capped = _capped_search(upload, upload.input_bytes)
        if capped is not None:
            return capped
    pixels = upload.image.width * upload.image.height
    if upload.fmt == "png" and upload.lossy and target >= PALETTE_MIN_BYTES_PER_PIXEL * pixels:
        found, encodes = palette_at_threshold(upload.image, upload.icc)
        if found is not None and len(found[0]) <= target:
            return Encoded(found[0], upload.image.size, found[1], encodes, found[2], target)
        encoded = _search(upload, target, capped=False)
        encoded.encodes += encodes
        return encoded
    return _search(upload, target, capped=False)


def _capped_search(upload, input_bytes):
    """The search with the upload's size as the target; None when no file of the format is that small
    (a few-byte PNG as JPEG: the format's headers alone are larger)."""
    try:
        return _search(upload, input_bytes, capped=True)
    except TargetUnreachableError:
        return None


def _search(upload, target, capped):
    """The byte-target search, and the result's quality_score."""
    out, scaled, settings, encodes = fit_target(upload.image, upload.icc, upload.fmt, target)
    size = scaled.size
    if scaled is not upload.image:
        settings["scale"] = round(size[0] / upload.image.width, 4)
    if capped:
        settings["capped_by_input"] = True
    # Dropped before scoring (memory), unless an AVIF must be encoded again with the metadata.
    again = scaled if upload.kept is not None and upload.fmt == "avif" and scaled is not upload.image else None
    del scaled
    scoring = time.perf_counter()
    score = score_result(upload.image, out)
    settings["score_seconds"] = round(time.perf_counter() - scoring, 3)
    return Encoded(out, size, settings, encodes, score, target, capped, again)
