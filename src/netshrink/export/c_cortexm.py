"""The C export on a Cortex-M class target: the generated `<name>.c` cross-compiled with
arm-none-eabi-gcc (Debian: gcc-arm-none-eabi) and measured with arm-none-eabi-size, the flash and
RAM a microcontroller user reads; and run bare metal on a board that qemu-system-arm emulates
(Debian: qemu-system-arm), so its logits can be checked against the integer path.

The program that runs on qemu is this module's own, with no C library: a vector table and a
reset handler (copy .data, zero .bss, call main), a linker script with code and const data in
the board's code memory and .data, .bss (the scratch arenas) and the stack in its data memory,
and semihosting (`bkpt 0xab`) for file I/O and exit: main reads one image at a time from
`inputs.bin`, runs `<name>_run` and appends the logits to `logits.bin`, both in the working
directory qemu runs in. int64 arithmetic comes from libgcc; memcpy / memset, which gcc may emit
for copy and fill loops, are defined in the startup file. qemu is not cycle-accurate, so no
speed is reported.

    >>> sizes = cortex_m_flash_and_ram(export, "build-m4", cpu="cortex-m4")
    >>> logits = run_on_qemu(export, quantize_input(images, export), "build-qemu")
    >>> (logits == IntegerModel(qmodel).run(images).integers.numpy()).all()
    True
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .c import CFLAGS, NUMPY_TYPES, input_bytes, object_sizes
from .c_source import CExport

__all__ = ["BOARDS", "Board", "cortex_m_flash_and_ram", "run_on_qemu"]

_GCC_APT = "apt-get install -y gcc-arm-none-eabi"
_QEMU_APT = "apt-get install -y qemu-system-arm"


@dataclass(frozen=True)
class Board:
    """A board that `qemu-system-arm -M <name>` emulates: its CPU and the memory the linker
    script uses, code (flash on a device) and data (RAM), as (origin, length) in bytes."""

    cpu: str
    code: tuple[int, int]
    data: tuple[int, int]


# ARM's MPS2 FPGA images (qemu hw/arm/mps2.c, checked with `info mtree`): 4 MB of ZBT SSRAM1 at
# 0x0 for code and 4 MB of SSRAM2/3 at 0x20000000 for data
_MPS2_CODE, _MPS2_DATA = (0x0, 4 << 20), (0x20000000, 4 << 20)
BOARDS = {
    "mps2-an385": Board("cortex-m3", _MPS2_CODE, _MPS2_DATA),
    "mps2-an386": Board("cortex-m4", _MPS2_CODE, _MPS2_DATA),
    "mps2-an500": Board("cortex-m7", _MPS2_CODE, _MPS2_DATA),
    # the BBC micro:bit's nRF51: a Cortex-M0 (no 64-bit multiply: libgcc's), 256 KB flash, 16 KB RAM
    "microbit": Board("cortex-m0", (0x0, 256 << 10), (0x20000000, 16 << 10)),
}


def cortex_m_flash_and_ram(
    export: CExport, workdir: str | Path, *, cpu: str = "cortex-m4"
) -> dict[str, int]:
    """arm-none-eabi-size of the export's object, compiled with `arm-none-eabi-gcc -mcpu=<cpu>
    -mthumb -O2 -std=c99 -Wall -Wextra -Werror -c`: flash = text (code + const data) + data,
    RAM = data + bss (the scratch arenas); plus the export's own weight and scratch counts, the
    same keys as netshrink.export.c.flash_and_ram. Raises ConfigError without the cross compiler
    (with its apt-get command)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    obj = workdir / f"{export.name}.o"
    _cross_gcc(cpu, ["-c", str(export.source), "-o", str(obj)])
    return object_sizes(obj, export, "arm-none-eabi-size", _GCC_APT)


def run_on_qemu(
    export: CExport,
    inputs: np.ndarray,
    workdir: str | Path,
    *,
    board: str = "mps2-an385",
    timeout: float = 120.0,
) -> np.ndarray:
    """Cross-compile the export with a bare-metal driver for `board` (BOARDS), run it on
    qemu-system-arm with semihosting on `inputs` (quantize_input's integers, one image per row)
    and return the logits (N, num_classes) as the C code's integers. Raises ConfigError for a
    missing tool (with its apt-get command) or bad inputs, RuntimeError when the build fails, the
    program reports an error or faults, or qemu runs past `timeout` seconds; a model too big for
    the board's memory fails at the link ("region FLASH / RAM overflowed")."""
    if board not in BOARDS:
        raise ConfigError(f"unknown board {board!r}: one of {', '.join(BOARDS)}")
    qemu = shutil.which("qemu-system-arm")
    if qemu is None:
        raise ConfigError(f"qemu-system-arm is not installed: {_QEMU_APT}")
    data = input_bytes(export, inputs)
    workdir = Path(workdir)
    elf = _build_program(export, workdir, BOARDS[board])
    (workdir / "inputs.bin").write_bytes(data)
    out = workdir / "logits.bin"
    out.unlink(missing_ok=True)
    _run_qemu(qemu, board, elf, workdir, timeout)
    logits = np.fromfile(out, dtype=NUMPY_TYPES[export.logits_ctype])
    count = len(inputs)
    if logits.size != count * export.num_classes:
        raise RuntimeError(f"qemu wrote {logits.size} logits for {count} images")
    return logits.reshape(count, export.num_classes)


def _cross_gcc(cpu: str, args: list[str]) -> None:
    if not re.fullmatch(r"cortex-m[\w.+]*", cpu):
        raise ConfigError(f"not a Cortex-M CPU: {cpu!r} (e.g. cortex-m0plus, cortex-m4)")
    gcc = shutil.which("arm-none-eabi-gcc")
    if gcc is None:
        raise ConfigError(f"arm-none-eabi-gcc is not installed: {_GCC_APT}")
    command = [gcc, f"-mcpu={cpu}", "-mthumb", *CFLAGS, *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"arm-none-eabi-gcc {' '.join(args)} failed:\n{done.stderr}")


def _build_program(export: CExport, workdir: Path, board: Board) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    startup, script, driver = workdir / "startup.c", workdir / "board.ld", workdir / "driver.c"
    startup.write_text(_STARTUP)
    script.write_text(_linker_script(board))
    driver.write_text(_DRIVER.format(name=export.name, upper=export.name.upper()))
    # the startup file defines memcpy / memset: gcc must not turn their loops into calls to them
    own = ["-ffreestanding", "-fno-tree-loop-distribute-patterns", "-c", str(startup)]
    _cross_gcc(board.cpu, [*own, "-o", str(workdir / "startup.o")])
    elf = workdir / "program.elf"
    sources = [str(workdir / "startup.o"), str(driver), str(export.source)]
    link = ["-nostdlib", "-T", str(script), *sources, "-lgcc", "-o", str(elf)]
    _cross_gcc(board.cpu, ["-I", str(export.header.parent), *link])
    return elf


def _linker_script(board: Board) -> str:
    (code, code_length), (data, data_length) = board.code, board.data
    lengths = {"code_length": code_length, "data_length": data_length}
    return _LINKER_SCRIPT.format(code=code, data=data, **lengths)


def _run_qemu(qemu: str, board: str, elf: Path, workdir: Path, timeout: float) -> None:
    machine = ["-M", board, "-display", "none", "-nodefaults", "-monitor", "none", "-nic", "none"]
    semihosting = ["-semihosting-config", "enable=on,target=native"]
    command = [qemu, *machine, *semihosting, "-kernel", str(elf.resolve())]
    try:
        done = subprocess.run(
            command,
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(
            f"qemu-system-arm -M {board} did not finish in {timeout:g} s: raise `timeout` for "
            "many images (a program that faulted would have stopped with an error)"
        ) from None
    if done.returncode != 0:
        raise RuntimeError(
            f"the program on qemu-system-arm -M {board} failed ({done.returncode}):\n"
            f"{done.stdout}{done.stderr}"
        )


_LINKER_SCRIPT = """\
/* generated by netshrink.export.c_cortexm: code and const data in code memory (flash),
   .data (copied from flash), .bss (the scratch arenas) and the stack in data memory (RAM) */
MEMORY
{{
    FLASH (rx) : ORIGIN = {code:#x}, LENGTH = {code_length:#x}
    RAM (rwx) : ORIGIN = {data:#x}, LENGTH = {data_length:#x}
}}
ENTRY(ns_reset)
SECTIONS
{{
    .text : {{
        KEEP(*(.vectors))
        *(.text .text.*)
        *(.rodata .rodata.*)
        . = ALIGN(4);
    }} > FLASH
    .ARM.exidx : {{ *(.ARM.exidx .ARM.exidx.*) }} > FLASH
    .data : {{
        . = ALIGN(4);
        ns_data_start = .;
        *(.data .data.*)
        . = ALIGN(4);
        ns_data_end = .;
    }} > RAM AT > FLASH
    ns_data_load = LOADADDR(.data);
    .bss (NOLOAD) : {{
        . = ALIGN(4);
        ns_bss_start = .;
        *(.bss .bss.* COMMON)
        . = ALIGN(4);
        ns_bss_end = .;
    }} > RAM
    ns_stack_top = ORIGIN(RAM) + LENGTH(RAM);
}}
"""

_STARTUP = """\
/* generated by netshrink.export.c_cortexm: vector table, reset handler, semihosting, and the
   memcpy / memset that gcc may call; no C library */
#include <stddef.h>
#include <stdint.h>

extern uint32_t ns_data_start, ns_data_end, ns_data_load, ns_bss_start, ns_bss_end;
extern uint32_t ns_stack_top;
int main(void);
void ns_reset(void);
void ns_exit(int status);
int ns_semihost(int op, void *args);
void ns_print(const char *text);

/* ARM semihosting (DUI0471): operation in r0, argument block in r1, result in r0 */
int ns_semihost(int op, void *args)
{
    register int r0 __asm__("r0") = op;
    register void *r1 __asm__("r1") = args;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void ns_print(const char *text)
{
    ns_semihost(0x04, (void *)text); /* SYS_WRITE0 */
}

void ns_exit(int status)
{
    /* SYS_EXIT: ADP_Stopped_ApplicationExit ends qemu with 0, RunTimeErrorUnknown with 1 */
    ns_semihost(0x18, (void *)(status == 0 ? 0x20026 : 0x20023));
    for (;;) {
    }
}

static void ns_fault(void)
{
    ns_print("netshrink: the CPU faulted\\n");
    ns_exit(1);
}

void ns_reset(void)
{
    uint32_t *src = &ns_data_load, *dst = &ns_data_start;
    while (dst < &ns_data_end)
        *dst++ = *src++;
    for (dst = &ns_bss_start; dst < &ns_bss_end; ++dst)
        *dst = 0;
    ns_exit(main());
}

__attribute__((section(".vectors"), used)) static void (*const ns_vectors[16])(void) = {
    (void (*)(void))&ns_stack_top, ns_reset, ns_fault, ns_fault, ns_fault, ns_fault, ns_fault,
    0, 0, 0, 0, ns_fault, ns_fault, 0, ns_fault, ns_fault,
};

void *memcpy(void *dest, const void *src, size_t n)
{
    unsigned char *d = dest;
    const unsigned char *s = src;
    while (n--)
        *d++ = *s++;
    return dest;
}

void *memmove(void *dest, const void *src, size_t n)
{
    unsigned char *d = dest;
    const unsigned char *s = src;
    if (d < s)
        return memcpy(dest, src, n);
    while (n--)
        d[n] = s[n];
    return dest;
}

void *memset(void *dest, int c, size_t n)
{
    unsigned char *d = dest;
    while (n--)
        *d++ = (unsigned char)c;
    return dest;
}
"""

_DRIVER = """\
/* generated by netshrink.export.c_cortexm: runs {name}_run on every image of inputs.bin and
   writes the logits to logits.bin, through semihosting */
#include <stdint.h>
#include "{name}.h"

int ns_semihost(int op, void *args);
void ns_print(const char *text);

static {name}_input_t ns_input[{upper}_INPUT_SIZE];
static {name}_logit_t ns_logits[{upper}_NUM_CLASSES];

static int ns_open(const char *path, int mode, int length)
{{
    uintptr_t args[3];
    args[0] = (uintptr_t)path;
    args[1] = (uintptr_t)mode;
    args[2] = (uintptr_t)length;
    return ns_semihost(0x01, args); /* SYS_OPEN */
}}

/* SYS_READ (0x06) / SYS_WRITE (0x05): returns the bytes not transferred */
static int ns_transfer(int op, int handle, void *buffer, int length)
{{
    uintptr_t args[3];
    args[0] = (uintptr_t)handle;
    args[1] = (uintptr_t)buffer;
    args[2] = (uintptr_t)length;
    return ns_semihost(op, args);
}}

int main(void)
{{
    const int in_bytes = (int)sizeof ns_input, out_bytes = (int)sizeof ns_logits;
    uintptr_t handle_arg[1];
    int in, out, length, i;
    in = ns_open("inputs.bin", 1, 10);  /* "rb" */
    out = ns_open("logits.bin", 5, 10); /* "wb" */
    if (in < 0 || out < 0) {{
        ns_print("netshrink: cannot open inputs.bin or logits.bin\\n");
        return 1;
    }}
    handle_arg[0] = (uintptr_t)in;
    length = ns_semihost(0x0C, handle_arg); /* SYS_FLEN */
    if (length < 0 || length % in_bytes != 0) {{
        ns_print("netshrink: inputs.bin is not a whole number of images\\n");
        return 1;
    }}
    for (i = 0; i < length / in_bytes; ++i) {{
        if (ns_transfer(0x06, in, ns_input, in_bytes) != 0) {{
            ns_print("netshrink: short read from inputs.bin\\n");
            return 1;
        }}
        {name}_run(ns_input, ns_logits);
        if (ns_transfer(0x05, out, ns_logits, out_bytes) != 0) {{
            ns_print("netshrink: short write to logits.bin\\n");
            return 1;
        }}
    }}
    ns_semihost(0x02, handle_arg); /* SYS_CLOSE */
    handle_arg[0] = (uintptr_t)out;
    ns_semihost(0x02, handle_arg);
    return 0;
}}
"""
