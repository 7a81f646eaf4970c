"""Reading and writing files safely: safetensors checked before parsing, writes that are atomic,
outputs that never overwrite inputs, run directories that one process at a time writes.

Nothing netshrink reads is unpickled; nothing it writes is left half-written by an interruption,
a full disk or a crash, and no file name it writes through can be predicted and planted.
"""

import errno
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from .errors import ConfigError, CorruptFileError, DirectoryInUseError

_SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file after checking that it is one; a pickle is refused unread."""
    if not path.is_file():
        raise CorruptFileError(f"{path}: no such file")
    with path.open("rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    header_len = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    looks_safe = 0 < header_len <= min(size - 8, _SAFETENSORS_MAX_HEADER) and head[8:9] == b"{"
    # A safetensors header length may well start with the byte 0x80 (a length of 128 + 256 k):
    # only a file that is not safetensors-shaped is judged by its pickle magic.
    if not looks_safe and (head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"):
        raise CorruptFileError(
            f"{path}: is a pickle (torch.save) file; netshrink never unpickles."
            " Save the state dict with safetensors instead"
        )
    if not looks_safe:
        raise CorruptFileError(f"{path}: not a safetensors file (bad header)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptFileError(f"{path}: corrupt safetensors file ({exc})") from None


def _umask() -> int:
    umask = os.umask(0)  # reading the umask means setting it: set it straight back
    os.umask(umask)
    return umask


# mkstemp makes its file 0o600; a written file gets the mode open() would have given it. Read
# once, at import, because reading the umask briefly changes it for every thread.
_NEW_FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write `path` by calling `write(tmp)` on a temporary file beside it, then renaming that over
    `path`: a failed or interrupted write leaves the old file (or none) and no temporary.

    The temporary's name is random and it is created exclusively (O_EXCL), so a symlink planted
    in the directory is never followed. Its bytes reach the disk before the rename and the
    rename before this returns, so a crash leaves the old file or the new one, never a blank.
    An OSError (disk full, read-only, `path` a directory) names `path`, not the temporary.
    """
    path = Path(path)
    tmp = None
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        tmp = Path(name)
        os.fchmod(fd, _NEW_FILE_MODE)
        os.close(fd)
        write(tmp)  # writers reopen the path (safetensors, matplotlib, onnx take a file name)
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc  # the same subclass, our name
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    _fsync_directory(path.parent)


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata=None) -> None:
    """`atomic_write` of a safetensors file, serialized in memory first: safetensors' own file
    writer reports a full disk as a SafetensorError, this an OSError like every other write."""
    data = safetensors_bytes(tensors, metadata=metadata)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable; some file systems cannot, and then it is skipped."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def os_error_line(exc: OSError) -> str:
    """'PATH: what went wrong' for an OSError (a full disk, a read-only or missing directory, a
    directory where a file was meant), the one line the command line prints for it."""
    if exc.filename is None:
        return exc.strerror or str(exc)
    if exc.errno == errno.EEXIST and not Path(exc.filename).is_dir():
        # Path.mkdir(exist_ok=True) on a file: the file is in the way of a folder
        return f"{exc.filename}: {os.strerror(errno.ENOTDIR)}"
    return f"{exc.filename}: {exc.strerror or exc}"


def refuse_overwrite_input(outputs: Iterable[Path], inputs: Iterable[Path]) -> None:
    """Raise ConfigError when an output file is one of the inputs (the same path, or a link to
    it): writing it would destroy what the command is reading."""
    inputs = list(inputs)
    for output in outputs:
        for source in inputs:
            if _same_file(Path(output), Path(source)):
                raise ConfigError(
                    f"the output {output} is the input {source}: writing it would destroy the "
                    "input; choose another output path"
                )


def _same_file(a: Path, b: Path) -> bool:
    # samefile sees through symlinks, `..` and hard links; an output that does not exist yet
    # cannot be an input, and a missing input is reported by whatever reads it
    return a.exists() and b.exists() and os.path.samefile(a, b)


LOCK_NAME = ".lock"


@contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on `directory` (flock on its `.lock` file, created if missing)
    while the block runs; while another process holds it, raise DirectoryInUseError at once.

    The kernel releases the lock when its holder exits, however it exits, so the `.lock` file
    a killed run leaves behind locks nothing: running again resumes as usual.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd = _open_lock_file(directory / LOCK_NAME)
    try:
        _lock(fd, directory)
        yield
    finally:
        os.close(fd)  # closing the file releases the lock


@contextmanager
def waiting_lock(path: Path, waiting: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (flock, created if missing) while the block
    runs, waiting for another process that holds it; `waiting()` is called once before a wait.
    For work two processes must not do twice (a baseline's training): the second waits, then
    finds the first one's result."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_lock_file(path)
    try:
        if not _try_lock(fd):
            waiting()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _open_lock_file(path: Path) -> int:
    # O_NOFOLLOW: a lock file planted as a symlink must not make us create or lock another file
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    return os.open(path, flags, _NEW_FILE_MODE)


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock without waiting; False when another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        return False
    return True


def _lock(fd: int, directory: Path) -> None:
    if not _try_lock(fd):
        raise DirectoryInUseError(
            f"{directory} is in use by another netshrink run (it holds {directory / LOCK_NAME}):"
            " wait for that run to finish, or give another --out"
        ) from None
