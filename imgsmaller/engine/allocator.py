"""glibc's allocator for a process that runs jobs on big pictures. No Flask, no SQL, no other engine module.

glibc serves a block from its heap, not from its own mmap, once a block that size was freed (its threshold
follows the frees up to 32 MiB), and freed heap pages stay in the process. A job frees whole pictures
(Pillow's 16 MiB blocks, a resize's intermediate: 38 MiB at 12 MP) and later makes others, so without a fixed
threshold a job's peak holds pictures it no longer uses (12 MP JPEG: 10-16 MiB more at the peak).

`tune_for_jobs()` fixes the threshold; it is called by the processes that run jobs (imgsmaller/job_process.py's
children, bench/memory.py's), never at import: the engine used as a library leaves its host's allocator alone.
`trim_heap()` gives freed heap pages back. Both do nothing where the C library is not glibc.
"""

import ctypes

# Above the 2.25 MiB planes of a proxy mosaic's scores, which stay on the heap (no CPU cost measured; at 1 MiB
# a job cost 12 % more CPU); what is bigger is given back to the system when freed.
MMAP_THRESHOLD = 5 << 19
_M_MMAP_THRESHOLD = -3


def _glibc():
    try:
        libc = ctypes.CDLL(None)
        return libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):   # not glibc
        return None


_GLIBC = _glibc()


def tune_for_jobs():
    """Fix glibc's mmap threshold at MMAP_THRESHOLD for this process (once, before its first job)."""
    if _GLIBC is not None:
        _GLIBC[0](_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def trim_heap():
    """Give the heap's freed pages back to the system (glibc's malloc_trim): the arrays of a proxy search's
    scores (~2 MiB each, under MMAP_THRESHOLD) leave ~20 MiB at 12 MP under the full-size work."""
    if _GLIBC is not None:
        _GLIBC[1](0)
