"""What a HEIC/HEIF file makes libheif allocate, read from its boxes before decoding. No Flask, no SQL.

The size pillow-heif reports is the primary image's after its transforms: a
`clap` crop can make a 16000x16000 HEVC frame report 64x48, and a grid reports
its `ispe` while libheif allocates the canvas its grid descriptor asks for
(measured with libheif 1.23: a grid claiming 64x48 over 4096x3072 tiles
allocated 25 MB before failing). So the pixel limit is checked on every image
spatial extent (`ispe`) in the file (the primary's before cropping, its tiles,
its alpha plane) and on the grid canvas, and overlays (`iovl`, whose canvas
no size property bounds) are refused.
"""

import struct

from imgsmaller.errors import InvalidImageError, UnsupportedImageError

# A HEIF's meta box holds a few dozen boxes; more is a crafted file, not a photo.
MAX_BOXES = 10_000


def check_heif_sizes(data, tiling, *, max_pixels):
    """Raise InvalidImageError (422) when anything libheif would decode is over `max_pixels`.

    `tiling` is pillow-heif's info["tiling"] of the primary image (a grid), or None.
    """
    ispe, item_types = _read_meta(data)
    if not ispe:  # libheif requires one per image: our reading and libheif's differ, so refuse
        raise InvalidImageError("The HEIF image has no readable size property (ispe); it cannot be read.")
    sizes = list(ispe)
    if tiling:
        sizes.append((tiling["image_width"], tiling["image_height"]))
    for width, height in sizes:
        if width * height > max_pixels:
            raise InvalidImageError(f"Image is {width}x{height} pixels; the limit is {max_pixels}.")
    if b"iovl" in item_types:
        raise UnsupportedImageError("HEIF overlay images are not supported. Send JPEG, PNG, WebP, AVIF or HEIC.")


def _read_meta(data):
    """([(width, height) of each ispe], {item types}) of the file's top-level meta box."""
    ispe, types = [], set()
    budget = [MAX_BOXES]
    for kind, start, end in _boxes(data, 0, len(data), budget):
        if kind != b"meta":
            continue
        for child, c_start, c_end in _boxes(data, start + 4, end, budget):  # a full box: version, flags
            if child == b"iprp":
                for prop, p_start, p_end in _boxes(data, c_start, c_end, budget):
                    if prop == b"ipco":
                        ispe += [struct.unpack_from(">II", data, s + 4)
                                 for box, s, e in _boxes(data, p_start, p_end, budget)
                                 if box == b"ispe" and e - s >= 12]
            elif child == b"iinf":
                types |= _item_types(data, c_start, c_end, budget)
        break  # one meta box: what libheif reads
    return ispe, types


def _item_types(data, start, end, budget):
    """The item_type of each infe (version 2 or 3) in an iinf box."""
    if end - start < 6:
        return set()
    count_bytes = 2 if data[start] == 0 else 4
    types = set()
    for kind, s, e in _boxes(data, start + 4 + count_bytes, end, budget):
        if kind != b"infe" or e - s < 4 or data[s] < 2:
            continue
        id_bytes = 2 if data[s] == 2 else 4
        at = s + 4 + id_bytes + 2  # version/flags, item_ID, item_protection_index
        if at + 4 <= e:
            types.add(bytes(data[at:at + 4]))
    return types


def _boxes(data, at, end, budget):
    """(type, body start, end) of each box in data[at:end]; stops at the first malformed one."""
    while at + 8 <= end:
        budget[0] -= 1
        if budget[0] < 0:
            raise InvalidImageError("The HEIF image has too many boxes to be a photo.")
        size, kind = struct.unpack_from(">I4s", data, at)
        body = at + 8
        if size == 1 and at + 16 <= end:
            size, body = struct.unpack_from(">Q", data, at + 8)[0], at + 16
        elif size == 0:
            size = end - at
        if size < body - at or at + size > end:
            return
        yield kind, body, at + size
        at += size
