"""What the benchmarks record about the CPU they ran on."""
import platform


def cpu_name() -> str:
    """The CPU's model name, with its family and model numbers and whether it has
    AVX-512: virtual machines report one name ("AMD EPYC") for hosts of different
    generations, whose matmul speeds differ up to 2x (docs/benchmarks.md, the batch-1
    latency of 2026-12-06), so the name alone does not say which one ran."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if not sep:
                    break          # the end of the first processor's block
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    name = fields.get("model name") or platform.processor() or platform.machine()
    extra = [f"family {fields['cpu family']} model {fields['model']}"
             if "cpu family" in fields and "model" in fields else None,
             "AVX-512" if "avx512f" in fields.get("flags", "").split() else None]
    extra = [e for e in extra if e]
    return f"{name} ({', '.join(extra)})" if extra else name
