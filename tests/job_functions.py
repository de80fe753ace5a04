"""Stand-ins for engine.compress that the pool's child processes import by name (JOB_FUNCTION).

The input's bytes say what to do: `PID:<path>` writes the child's pid to <path> then sleeps an
hour (a job only a kill can stop), `DIE` kills the child as the kernel's OOM killer would,
`HOLD:<path>\n<image>` waits until <path> exists, then compresses the image (a job the test ends),
anything else is compressed by the real engine.
"""

import os
import signal
import time

from imgsmaller import engine


def scripted(data, **options):
    if data.startswith(b"PID:"):
        with open(data[4:].decode(), "w") as file:
            file.write(str(os.getpid()))
        time.sleep(3600)
    if data.startswith(b"HOLD:"):
        path, data = data[5:].split(b"\n", 1)
        while not os.path.exists(path.decode()):
            time.sleep(0.02)
    if data == b"DIE":
        os.kill(os.getpid(), signal.SIGKILL)
    return engine.compress(data, **options)
