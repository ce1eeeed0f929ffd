"""Writing files without losing one: every command writes under a temporary name no user would pick, created
exclusively, and renames into place when complete; a folder a command writes is claimed by a manifest, so the
command replaces (with --force) only what it wrote itself and never touches a file it did not write.

    <out>/.wb-outputs.json   {"command": "sample", "files": ["clip-0000.mp4", ...]}   (top-level entries)
    <parent>/.wb-<kind>-<pid>-<random>/    a folder being written by process <pid> (mkdtemp's name)

A process removes only its own temporary names; `sweep_stale` removes those of processes that no longer run
(a kill), which the next run of the same command does first.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

PREFIX = ".wb-"
MANIFEST = ".wb-outputs.json"


def _tmp_prefix(kind: str) -> str:
    return f"{PREFIX}{kind}-{os.getpid()}-"


def sweep_stale(parent: Path, kind: str) -> list[Path]:
    """Remove `.wb-<kind>-<pid>-*` temporaries in `parent` whose process is gone (a killed run); returns them."""
    removed = []
    for p in Path(parent).glob(f"{PREFIX}{kind}-*-*") if Path(parent).is_dir() else []:
        pid = p.name[len(PREFIX) + len(kind) + 1:].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # another user's process
        return True
    return True


@contextlib.contextmanager
def writing(path: str | Path):
    """A failed write in the block (a full disk) as one OSError naming `path` and the reason: safetensors raises a
    SafetensorError ("I/O error: No space left on device (os error 28)"), a write into an open file an OSError that
    names no file."""
    from safetensors import SafetensorError
    try:
        yield
    except SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        if code:
            raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from None
        raise OSError(f"{path}: not written ({e})") from None
    except OSError as e:
        raise _named(e, Path(path)) from None


@contextlib.contextmanager
def staged_file(path: str | Path, kind: str = "file"):
    """A fresh temporary file beside `path` to write; fsynced and renamed to `path` when the block ends, removed
    if it raises (a half-written file is never at `path`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path.parent, kind)
    fd, name = tempfile.mkstemp(prefix=_tmp_prefix(kind), suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with writing(path):
            yield tmp
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            _plain_mode(tmp)
            os.replace(tmp, path)
            _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _staging(out: Path, kind: str):
    """A fresh folder of ours beside `out` (older ones of killed runs swept first); removed if the block raises."""
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(out.parent, kind)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(kind), dir=out.parent))
    try:
        with writing(out):
            yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _named(e: OSError, path: Path) -> OSError:
    """An OS error naming a file the user can find: as it was, or naming `path` where it named none (a write that
    failed inside a library) or a temporary name of ours, gone by the time anyone reads the message."""
    if e.errno is None or (e.filename is not None and not _temporary(e.filename)):
        return e
    return type(e)(e.errno, e.strerror or str(e), str(path))


def _temporary(filename) -> bool:
    return any(part.startswith(PREFIX) for part in Path(str(filename)).parts)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (the rename itself, not only the bytes renamed)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, out: Path, replaces: set[str] | None, flag: str = "--out") -> None:
    """Rename the complete folder `tmp` to `out`, durable first. An `out` that holds entries is refused, unless
    `replaces` names what of it may go: then the other entries (a user's table, a note) are copied into `tmp` and
    the old `out` is swapped out whole, so `out` is intact until the swap."""
    _fsync_tree(tmp)
    _plain_mode(tmp)
    if out.is_symlink() or (out.exists() and (not out.is_dir() or (any(out.iterdir()) and replaces is None))):
        raise FileExistsError(f"{flag} {out}: appeared while it was being written; nothing replaced")
    if not out.exists() or not any(out.iterdir()):
        os.replace(tmp, out)
    else:
        _keep_added(out, tmp, replaces, flag)
        old = Path(tempfile.mkdtemp(prefix=f"{tmp.name}-old-", dir=out.parent))
        os.replace(out, old / out.name)   # a kill between the two renames leaves the old output in `old`
        os.replace(tmp, out)
        shutil.rmtree(old)
    _fsync_dir(out.parent)


@contextlib.contextmanager
def staged_folder(out: str | Path, kind: str, replaces: set[str] | None = None):
    """A fresh temporary folder beside `out` to write into; renamed to `out` when the block ends, removed if it
    raises (a half-written folder is never at `out`). `out` must be absent or empty, unless `replaces` names the
    entries of an earlier output there that the new one replaces (the others are kept)."""
    out = Path(out)
    with _staging(out, kind) as tmp:
        yield tmp
        _publish(tmp, out, replaces)


def check_output_folder(out: str | Path, command: str, force: bool = False, flag: str = "--out") -> None:
    """Refuse, before any work, an `out` that `command` may not write: a file, or a folder holding anything but
    an earlier output of `command` (that one only with `force`)."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise FileExistsError(f"{flag} {out}: is a file; expected a folder for the {command} output")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    earlier = _manifest(out)
    if earlier is None:
        raise FileExistsError(f"{flag} {out}: holds files `{command}` did not write (e.g. {entries[0]}); choose a "
                              f"new or empty folder")
    if earlier["command"] != command:
        raise FileExistsError(f"{flag} {out}: holds the output of `{earlier['command']}`; choose another folder")
    if not force:
        raise FileExistsError(f"{flag} {out}: holds an earlier `{command}` output; choose a new folder, or pass "
                              f"--force to replace it (files you added there are kept)")


@contextlib.contextmanager
def output_folder(out: str | Path, command: str, force: bool = False, flag: str = "--out"):
    """A temporary folder to write `command`'s outputs into; when the block ends it becomes `out`, with a manifest
    of what it holds. An earlier output of `command` at `out` (only with `force`) is replaced: its files go, the
    files a user added beside them stay. Checked again at the end: the folder may have changed during the work."""
    out = Path(out)
    check_output_folder(out, command, force, flag)
    with _staging(out, command) as tmp:
        yield tmp
        written = sorted(p.name for p in tmp.iterdir())
        (tmp / MANIFEST).write_text(json.dumps({"command": command, "files": written}, indent=1))
        check_output_folder(out, command, force, flag)
        earlier = _manifest(out) if out.is_dir() else None
        _publish(tmp, out, set(earlier["files"]) | {MANIFEST} if earlier else None, flag)


def _keep_added(out: Path, tmp: Path, ours: set[str], flag: str) -> None:
    """Copy into `tmp` every entry of `out` the earlier output did not write (a user's table, a note)."""
    for entry in out.iterdir():
        if entry.name in ours:
            continue
        if (tmp / entry.name).exists():
            raise FileExistsError(f"{flag} {out}: {entry.name} was added there by hand and the new output has a "
                                  f"file of that name; move it, then run again")
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, tmp / entry.name, symlinks=True)
        else:
            shutil.copy2(entry, tmp / entry.name, follow_symlinks=False)


def _manifest(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(data, dict) and isinstance(data.get("command"), str) and isinstance(data.get("files"), list)
    return data if ok else None


def _fsync_tree(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file() and not f.is_symlink():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def _plain_mode(path: Path) -> None:
    """The modes a plain mkdir and open would give (mkdtemp makes 0700, mkstemp and safetensors 0600)."""
    umask = _umask()
    for p in [path, *(path.rglob("*") if path.is_dir() else [])]:
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


def _umask() -> int:
    """The process's umask, read without setting it (os.umask sets it, for a moment, for every thread)."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"^Umask:\s*([0-7]+)", status, re.M)[1], 8)
    except (OSError, TypeError):       # no procfs (not Linux): the set-and-restore way
        umask = os.umask(0o022)
        os.umask(umask)
        return umask
