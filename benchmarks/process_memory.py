"""This process's memory, read from Linux's /proc: the resident set now
and its peak since a reset (benchmarks/speed.py's memory column on CPU),
and whether TensorFlow sees a GPU (whose allocator it reads instead)."""


def gpu_present():
    import tensorflow as tf
    return bool(tf.config.list_physical_devices("GPU"))


def _status_mb(field):
    """One memory field of /proc/self/status (reported in kB), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise OSError(f"no {field}")


def rss_mb():
    return _status_mb("VmRSS")


def peak_rss_mb():
    """The peak resident set since the process started or the last
    reset_peak_rss()."""
    return _status_mb("VmHWM")


def reset_peak_rss():
    """Hands freed heap back to the OS, then resets the kernel's peak RSS
    (Linux ≥ 4.0); False where either is unavailable."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
