"""Where the packaged default model lives, wherever labeler is installed, and which of the two
packaged models is the default on this machine."""

from __future__ import annotations

from pathlib import Path

# The int8 model runs the network at 40-65% of the float one's CPU. Its weights have 7 bits, so ONNX
# Runtime's x86 int8 kernels add their products without saturating, with VNNI dot-product
# instructions or with AVX2's 16-bit pairs alike: the same integers, hence the outputs it was
# fitted and checked on (it was built without VNNI and reproduced the numbers measured with it).
# Other CPUs (ARM, x86 without AVX2) take int8 code paths that were never checked, so they get
# the float model; an int8 model whose outputs differ is refused at start in any case.
INT8_MODEL_NAME = "efficientnet-lite2-int8-dogs"
FLOAT_MODEL_NAME = "efficientnet-lite2-dogs"
INT8_CPU_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "avx2"})
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags as Linux lists them; none where they cannot be read."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def default_model_name(flags: frozenset[str] | None = None) -> str:
    """The packaged model labeler uses when LABELER_MODEL_DIR is unset: int8 on an x86 CPU
    with AVX2 or VNNI, the float model anywhere else."""
    found = cpu_flags() if flags is None else flags
    return INT8_MODEL_NAME if found & INT8_CPU_FLAGS else FLOAT_MODEL_NAME


def default_model_dir(name: str | None = None) -> Path:
    """The packaged model's folder (``name``: that packaged model, else this machine's default).

    A wheel carries ``models/`` as ``labeler/_models/`` (pyproject's force-include); a
    checkout has it beside the package. When neither exists the checkout path is returned,
    so the start-up error names the place where the model was expected.
    """
    name = name or default_model_name()
    package = Path(__file__).resolve().parents[1]
    installed = package / "_models" / name
    if installed.is_dir():
        return installed
    return package.parent / "models" / name
