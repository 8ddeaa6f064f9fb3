"""Where the packaged default model lives, wherever labeler is installed, and which of the two
packaged models is the default on this machine."""

from __future__ import annotations

from pathlib import Path

# The int8 model runs the network about 2.4x cheaper. Its integer arithmetic gives exactly the
# outputs it was fitted and checked on where the CPU has VNNI dot-product instructions
# (verified here); other CPUs take a different int8 code path in ONNX Runtime whose rounding is
# untested, so they get the float model, whose outputs do not depend on the CPU.
INT8_MODEL_NAME = "efficientnet-lite2-int8-dogs"
FLOAT_MODEL_NAME = "efficientnet-lite2-dogs"
INT8_CPU_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})
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
    """The packaged model labeler uses when LABELER_MODEL_DIR is unset: int8 on a CPU with
    VNNI, the float model anywhere else."""
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
