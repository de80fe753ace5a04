"""AVIF: the AV1 frame sizes a file will really decode to, read from its boxes before decoding.

Pure parsing of ISO-BMFF boxes and AV1 OBUs with the stdlib; imports no other
engine module and never decodes pixels.
"""

from imgsmaller.errors import InvalidImageError

# An AVIF's width and height (Pillow's size, checked against max_pixels) come from
# its container (the `ispe` property, or a track's `tkhd`), but the AV1 decoder
# allocates what the AV1 sequence header inside says: a 3.9 KB file whose ispe said
# 64x64 held a 16000x16000 frame and decoded to ~530 MB (issue 14, finding 3).
# So before decoding, every AV1 sequence header of every av01 item (its av1C
# configOBUs and its data, located through iloc) and of every track's first sample
# is read, and the file is refused if a frame may be larger than its container says,
# if one frame is over max_pixels, or if the frames decoded together are.

# Colour and alpha (each a grid whose tiles may overhang the canvas a little,
# e.g. 512-pixel tiles over 7000 pixels: +5 %) of one image at max_pixels.
AVIF_DECODE_BUDGET = 2.5
_MAX_BOXES = 10_000  # far above any real file (libavif writes ~20); bounds the parse time


class _Corrupt(Exception):
    pass


def _boxes(data, start, end):
    """(type, body_start, body_end) of each ISO-BMFF box in data[start:end]."""
    pos, count = start, 0
    while pos < end:
        count += 1
        if end - pos < 8 or count > _MAX_BOXES:
            raise _Corrupt
        size, kind = int.from_bytes(data[pos:pos + 4], "big"), bytes(data[pos + 4:pos + 8])
        header = 8
        if size == 1:
            if end - pos < 16:
                raise _Corrupt
            size, header = int.from_bytes(data[pos + 8:pos + 16], "big"), 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise _Corrupt
        yield kind, pos + header, pos + size
        pos += size


def _top_level(data):
    """The file's boxes up to the first malformed one: libavif too stops there (with an
    error, or with what it has read, which tolerates trailing bytes after the boxes)."""
    found = {}
    try:
        for kind, body, stop in _boxes(data, 0, len(data)):
            found.setdefault(kind, []).append((body, stop))
    except _Corrupt:
        pass
    return found


def _children(data, start, end):
    found = {}
    for kind, body, stop in _boxes(data, start, end):
        found.setdefault(kind, []).append((body, stop))
    return found


class _Reader:
    def __init__(self, data, start, end):
        self.data, self.pos, self.end = data, start, end

    def uint(self, n):
        if n == 0:
            return 0
        if self.pos + n > self.end:
            raise _Corrupt
        value = int.from_bytes(self.data[self.pos:self.pos + n], "big")
        self.pos += n
        return value

    def skip(self, n):
        if self.pos + n > self.end:
            raise _Corrupt
        self.pos += n


class _Bits:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def f(self, n):
        value = 0
        for _ in range(n):
            byte = self.pos >> 3
            if byte >= len(self.data):
                raise _Corrupt
            value = (value << 1) | ((self.data[byte] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value

    def uvlc(self):
        zeros = 0
        while not self.f(1):
            zeros += 1
            if zeros >= 32:
                return 2**32 - 1
        return self.f(zeros) + (1 << zeros) - 1


def _leb128(data, pos):
    value = 0
    for i in range(8):
        if pos >= len(data):
            raise _Corrupt
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos
    raise _Corrupt


def _sequence_header_sizes(obus):
    """(max_frame_width, max_frame_height) of each sequence header OBU in an AV1 stream.

    The framing is walked as dav1d walks it; where it breaks, the decoder stops too.
    """
    sizes, pos = [], 0
    while pos < len(obus):
        header = obus[pos]
        if header & 0x80:  # forbidden bit: the decoder refuses the stream here
            break
        kind, extension, has_size = (header >> 3) & 0xF, header & 0x4, header & 0x2
        pos += 2 if extension else 1
        if has_size:
            try:
                length, pos = _leb128(obus, pos)
            except _Corrupt:
                break
        else:
            length = len(obus) - pos
        if pos + length > len(obus):
            break
        if kind == 1:  # OBU_SEQUENCE_HEADER (AV1 spec 5.5)
            sizes.append(_frame_size_limit(bytes(obus[pos:pos + length])))
        pos += length
    return sizes


def _frame_size_limit(payload):
    bits = _Bits(payload)
    bits.f(3)  # seq_profile
    bits.f(1)  # still_picture
    if bits.f(1):  # reduced_still_picture_header
        bits.f(5)  # seq_level_idx[0]
    else:
        decoder_model_info = False
        buffer_delay_length = 0
        if bits.f(1):  # timing_info_present_flag
            bits.f(32), bits.f(32)
            if bits.f(1):  # equal_picture_interval
                bits.uvlc()
            decoder_model_info = bool(bits.f(1))
            if decoder_model_info:
                buffer_delay_length = bits.f(5) + 1
                bits.f(32), bits.f(5), bits.f(5)
        initial_display_delay = bits.f(1)
        for _ in range(bits.f(5) + 1):  # operating points
            bits.f(12)
            if bits.f(5) > 7:
                bits.f(1)  # seq_tier
            if decoder_model_info and bits.f(1):
                bits.f(buffer_delay_length), bits.f(buffer_delay_length), bits.f(1)
            if initial_display_delay and bits.f(1):
                bits.f(4)
    width_bits, height_bits = bits.f(4) + 1, bits.f(4) + 1
    return bits.f(width_bits) + 1, bits.f(height_bits) + 1


def _full_box(data, body, stop):
    reader = _Reader(data, body, stop)
    version, flags = reader.uint(1), reader.uint(3)
    return reader, version, flags


def _avif_items(data, meta_body, meta_stop):
    """[(item id, (ispe w, h) or None, [AV1 streams to check])] of every av01 item."""
    meta = _children(data, meta_body + 4, meta_stop)
    types = {}
    for body, stop in meta.get(b"iinf", []):
        reader, version, _ = _full_box(data, body, stop)
        reader.uint(2 if version == 0 else 4)
        for kind, infe_body, infe_stop in _boxes(data, reader.pos, stop):
            if kind != b"infe":
                continue
            entry, infe_version, _ = _full_box(data, infe_body, infe_stop)
            if infe_version < 2:
                continue  # no item_type before version 2: not an AV1 item
            item_id = entry.uint(2 if infe_version == 2 else 4)
            entry.uint(2)
            types[item_id] = bytes(data[entry.pos:entry.pos + 4])
    av1_items = [item_id for item_id, kind in types.items() if kind == b"av01"]
    if not av1_items:
        return []
    idat = meta.get(b"idat", [(0, 0)])[0]
    locations = {}
    for body, stop in meta.get(b"iloc", []):
        reader, version, _ = _full_box(data, body, stop)
        sizes = reader.uint(1)
        offset_size, length_size = sizes >> 4, sizes & 0xF
        sizes = reader.uint(1)
        base_size, index_size = sizes >> 4, (sizes & 0xF) if version in (1, 2) else 0
        for _ in range(reader.uint(2 if version < 2 else 4)):
            item_id = reader.uint(2 if version < 2 else 4)
            method = reader.uint(2) & 0xF if version in (1, 2) else 0
            reference = reader.uint(2)
            base = reader.uint(base_size)
            extents = []
            for _ in range(reader.uint(2)):
                reader.uint(index_size)
                extents.append((base + reader.uint(offset_size), reader.uint(length_size)))
            locations[item_id] = (method, reference, extents)
    properties, associations = [], {}
    for body, stop in meta.get(b"iprp", []):
        iprp = _children(data, body, stop)
        for ipco_body, ipco_stop in iprp.get(b"ipco", []):
            properties += list(_boxes(data, ipco_body, ipco_stop))
        for ipma_body, ipma_stop in iprp.get(b"ipma", []):
            reader, version, flags = _full_box(data, ipma_body, ipma_stop)
            for _ in range(reader.uint(4)):
                item_id = reader.uint(2 if version < 1 else 4)
                for _ in range(reader.uint(1)):
                    index = reader.uint(2) & 0x7FFF if flags & 1 else reader.uint(1) & 0x7F
                    associations.setdefault(item_id, []).append(index)
    items = []
    for item_id in av1_items:
        ispe, streams = None, []
        for index in associations.get(item_id, []):
            if not 1 <= index <= len(properties):
                continue
            kind, body, stop = properties[index - 1]
            if kind == b"ispe":
                reader, _, _ = _full_box(data, body, stop)
                ispe = (reader.uint(4), reader.uint(4))
            elif kind == b"av1C" and stop - body > 4:
                streams.append(data[body + 4:stop])  # configOBUs
        if item_id in locations:
            streams.append(_item_data(data, idat, *locations[item_id]))
        items.append((item_id, ispe, streams))
    return items


def _item_data(data, idat, method, reference, extents):
    if reference != 0 or method not in (0, 1):
        raise _Corrupt  # data in another file or in another item: libavif reads neither
    start, end = (0, len(data)) if method == 0 else idat
    parts = []
    for offset, length in extents:
        begin = start + offset
        stop = end if length == 0 else begin + length
        if begin > end or stop > end:
            raise _Corrupt
        parts.append(data[begin:stop])
    return b"".join(parts)


def _avif_tracks(data, moov_body, moov_stop):
    """[(track id, (tkhd w, h), [AV1 streams to check])]: the first sample of each av01 track."""
    tracks = []
    for trak_body, trak_stop in _children(data, moov_body, moov_stop).get(b"trak", []):
        trak = _children(data, trak_body, trak_stop)
        size = None
        for body, stop in trak.get(b"tkhd", []):
            reader, version, _ = _full_box(data, body, stop)
            reader.skip(16 if version == 1 else 8)  # creation and modification times
            track_id = reader.uint(4)
            # reserved, duration, reserved, layer, alternate group, volume, reserved, matrix
            reader.skip(4 + (8 if version == 1 else 4) + 8 + 2 + 2 + 2 + 2 + 36)
            size = (reader.uint(4) >> 16, reader.uint(4) >> 16)
        stbl = _descend(data, trak, b"mdia", b"minf", b"stbl")
        if size is None or stbl is None:
            continue
        streams = []
        for body, stop in stbl.get(b"stsd", []):
            for kind, entry_body, entry_stop in _boxes(data, body + 8, stop):
                if kind == b"av01" and entry_stop - entry_body > 78:
                    for child, child_body, child_stop in _boxes(data, entry_body + 78, entry_stop):
                        if child == b"av1C" and child_stop - child_body > 4:
                            streams.append(data[child_body + 4:child_stop])
                    streams.append(_first_sample(data, stbl))
        if streams:
            tracks.append((track_id, size, streams))
    return tracks


def _descend(data, boxes, *path):
    for kind in path:
        if kind not in boxes:
            return None
        body, stop = boxes[kind][0]
        boxes = _children(data, body, stop)
    return boxes


def _first_sample(data, stbl):
    offset = None
    for kind, width in ((b"stco", 4), (b"co64", 8)):
        for body, stop in stbl.get(kind, []):
            reader, _, _ = _full_box(data, body, stop)
            if reader.uint(4):
                offset = reader.uint(width)
    length = None
    for body, stop in stbl.get(b"stsz", []):
        reader, _, _ = _full_box(data, body, stop)
        length = reader.uint(4)
        if length == 0 and reader.uint(4):
            length = reader.uint(4)
    if offset is None or not length:
        return b""  # no first sample: nothing is decoded from this track
    if offset + length > len(data):
        raise _Corrupt
    return data[offset:offset + length]


def check_avif_frames(data, *, max_pixels):
    """Refuse (422) an AVIF whose AV1 frames are larger than its container says or than max_pixels."""
    view = memoryview(data)
    try:
        top = _top_level(view)
        sources = []
        if b"meta" in top:
            sources.append(("item", _avif_items(view, *top[b"meta"][0])))
        if b"moov" in top:
            sources.append(("track", _avif_tracks(view, *top[b"moov"][0])))
        for source, entries in sources:
            decoded = 0
            for _id, declared, streams in entries:
                frames = [size for stream in streams for size in _sequence_header_sizes(stream)]
                if not frames:
                    continue  # no sequence header: the decoder has nothing to decode
                width, height = max(w for w, _ in frames), max(h for _, h in frames)
                if declared is not None and (width > declared[0] or height > declared[1]):
                    raise InvalidImageError(
                        f"The AVIF image is corrupt: its container says {declared[0]}x{declared[1]} pixels "
                        f"but its AV1 {source} holds frames of up to {width}x{height}.")
                if width * height > max_pixels:
                    raise InvalidImageError(
                        f"The AVIF image holds an AV1 frame of {width}x{height} pixels; the limit is {max_pixels}.")
                decoded += width * height
            if decoded > AVIF_DECODE_BUDGET * max_pixels:
                raise InvalidImageError(
                    f"The AVIF image's AV1 frames total {decoded} pixels; the limit is {max_pixels}.")
    except _Corrupt:
        raise InvalidImageError("The AVIF image is corrupt and cannot be read.") from None
