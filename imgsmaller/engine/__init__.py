"""The compression engine's public API, re-exported; no code here. Nothing in the engine imports Flask or SQL.

    probe(data, max_pixels=...) -> Probe       validate before answering 202
    compress(data, output=..., target_size=..., max_pixels=..., resize=Resize(...), keep_metadata=...) -> Result

pipeline.py   compress() and Result: decode, normalise, then target or auto
decode.py     sniff, validate and decode an upload (HEIC via pillow-heif); probe(); orientation, colour
target.py     the byte-target search: quality floors, predictors, downscaling
search.py     pure quality searches on an encode function (secant, ladders, repacked)
predicted.py  searches with a cheap size predictor re-calibrated by real encodes
auto.py       auto mode: the smallest encode scoring >= 80 (SSIMULACRA2)
quality.py    a result's quality_score
allocator.py  glibc's allocator for the job processes: a fixed mmap threshold, heap trims
score.py      SSIMULACRA2 (OpenCV blur, numpy)
formats.py    per output format: encoders to try, graphics, proxy mosaics
encoders.py   JPEG, WebP, AVIF encoders with their optional wheels
png_encoder.py  palette and lossless PNG (libimagequant, oxipng)
metadata.py   the upload minus its metadata; whether an upload is lossy; keep_metadata
resize.py     max_width/max_height/fit: the checked box, the size it gives, the resampling
notes.py      a result's warnings (plain sentences)

Codec facts and the measurements behind the constants: docs/engine.md.
"""

from .decode import SUPPORTED_INPUT, Probe, check_output_limits, probe
from .formats import SUPPORTED_OUTPUT
from .metadata import KEEP_METADATA
from .pipeline import Result, compress
from .resize import Resize

__all__ = ["probe", "compress", "check_output_limits", "Probe", "Result", "Resize", "KEEP_METADATA",
           "SUPPORTED_INPUT", "SUPPORTED_OUTPUT"]
