"""Atomic file writes and the clean-up of what killed writers leave behind.

The data goes to a temporary file in the target folder which is then renamed over the target,
so a reader, a crash or a full disk never leaves half a file behind (`write_bytes_atomic`,
`write_text_atomic`). `write_files_atomic` writes the several outputs of one photo as a unit:
all or, on failure, none. Existing files are kept unless `force=True`. Temporary files carry
the writing machine and process in their name, so that `remove_stale_partials` can remove
those that a killed process left without touching those of a run still writing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import socket
import stat


class ImageWriteError(ValueError):
    """An image or report that was not written; the message names the file and the reason."""


# Temporary files are named `.<target name>.<host>-<pid>.<random>.partial`, next to their target:
# the host tag and the pid of the writing process let a later run tell a leftover of a killed
# process (removed by `remove_stale_partials`) from a file that a running process is writing.
PARTIAL_SUFFIX = ".partial"
_PARTIAL_NAME = re.compile(
    r"^\.(?P<target>.+)\.(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)\.[0-9a-f]+\.partial$")


def _host_tag():
    """8 hex digits naming this machine: a pid only means something on the machine that
    wrote it (an output folder may be shared over the network)."""
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _temporary_path(path, pid=None):
    """A fresh temporary name next to `path`, tagged with this machine and `pid` (default:
    this process)."""
    folder, name = os.path.split(os.path.abspath(path))
    pid = os.getpid() if pid is None else pid
    return os.path.join(folder, f".{name}.{_host_tag()}-{pid}.{secrets.token_hex(4)}"
                                f"{PARTIAL_SUFFIX}")


def _create_temporary(path):
    """A new empty temporary file next to `path`: (open file descriptor, its path)."""
    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
             | getattr(os, "O_BINARY", 0))
    while True:
        temporary = _temporary_path(path)
        try:
            # 0o666 minus the umask: the permissions a plain open() gives a new file.
            return os.open(temporary, flags, 0o666), temporary
        except FileExistsError:
            continue  # 32 random bits taken already: draw again


def _remove_quietly(path):
    with contextlib.suppress(OSError):
        os.remove(path)


def _keep_previous(path):
    """A second name for the existing `path` (a hard link; a copy where links are not
    supported), so that its previous version can be put back; returns that name."""
    follow = {"follow_symlinks": False} if os.link in os.supports_follow_symlinks else {}
    while True:
        backup = _temporary_path(path)
        try:
            os.link(path, backup, **follow)
            return backup
        except FileExistsError:
            continue
        except OSError:
            break
    handle, backup = _create_temporary(path)
    try:
        with os.fdopen(handle, "wb") as target, open(path, "rb") as source:
            shutil.copyfileobj(source, target)
            target.flush()
            os.fsync(target.fileno())
        shutil.copymode(path, backup)
    except BaseException:
        _remove_quietly(backup)
        raise
    return backup


def _exists_error(path):
    return ImageWriteError(f"{path}: already exists (use --force / force=True to overwrite)")


def _place(temporary, path, force):
    """Moves the complete `temporary` to `path` (without `force`, only if `path` is free)."""
    if force:
        os.replace(temporary, path)
        return
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise _exists_error(path) from None
    except OSError:
        if os.path.lexists(path):
            raise _exists_error(path) from None
        os.replace(temporary, path)


def _sync_folders(paths):
    """fsyncs the folders of `paths`, so that the renames survive a power cut (where the
    system allows opening a folder; elsewhere this does nothing)."""
    for folder in {os.path.dirname(os.path.abspath(path)) for path in paths}:
        try:
            handle = os.open(folder, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(handle)
        except OSError:
            pass
        finally:
            os.close(handle)


def write_files_atomic(files, force=False):
    """Writes several files as one unit: all of them or, on failure, none.

    `files` maps paths to bytes, in the order the files are moved into place (a report that
    lists the others goes last). Every file is first written in full to a temporary file next
    to its target, flushed and fsynced; only then are they renamed into place. If one cannot
    be placed, those this call placed already are taken back: new files are removed and, with
    `force`, previous versions are put back (they were kept under a second name until every
    file was placed), so the targets hold what they held before.

    Without `force`, a target that exists is an error, also when it appears while writing:
    targets are hard links to the temporary files, which fails if the target exists (where
    links are not supported, existence is checked just before an os.replace instead).

    A process killed while writing leaves its temporary files (`remove_stale_partials` removes
    them later) and never a half-written target; killed during the renames themselves, it can
    leave some of the targets placed and others not.

    Raises ImageWriteError naming the file and the reason; the targets are then unchanged
    (should taking back fail too, the message says what could not be undone).
    """
    targets = [(os.fspath(path), bytes(data)) for path, data in files.items()]
    seen = set()
    for path, _ in targets:
        if os.path.abspath(path) in seen:
            raise ImageWriteError(f"{path}: named twice in one write")
        seen.add(os.path.abspath(path))
        if not force and os.path.lexists(path):
            raise _exists_error(path)
        if os.path.isdir(path):
            raise ImageWriteError(f"{path}: is a folder")
    temporaries, backups, placed = {}, {}, []
    current = None
    try:
        for current, data in targets:
            os.makedirs(os.path.dirname(os.path.abspath(current)), exist_ok=True)
            handle, temporaries[current] = _create_temporary(current)
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
        if force:
            for current, _ in targets:
                if os.path.lexists(current):
                    backups[current] = _keep_previous(current)
        for current, _ in targets:
            _place(temporaries[current], current, force)
            placed.append(current)
        _sync_folders(path for path, _ in targets)
    except BaseException as error:
        kept = _take_back(placed, backups)
        if isinstance(error, OSError):
            message = f"{current}: cannot write ({error.strerror or error})"
        elif isinstance(error, ImageWriteError):
            message = str(error)
        else:  # KeyboardInterrupt and the like: taken back, then passed on
            raise
        if kept:
            message += "; could not undo: " + ", ".join(kept)
        raise ImageWriteError(message) from None
    finally:
        for temporary in temporaries.values():
            if os.path.lexists(temporary):
                _remove_quietly(temporary)
        for backup in backups.values():
            if os.path.lexists(backup):
                _remove_quietly(backup)


def _take_back(placed, backups):
    """Undoes the placements of a failed write_files_atomic; returns what could not be
    undone, one phrase per file."""
    problems = []
    for path in reversed(placed):
        try:
            if path in backups:
                os.replace(backups[path], path)
            else:
                os.remove(path)
        except OSError as error:
            problems.append(f"{path} ({error.strerror or error})")
            # Keep its previous version: after this failure it is the only copy.
            backup = backups.pop(path, None)
            if backup is not None:
                problems[-1] += f", previous version kept as {backup}"
    return problems


def _process_running(pid):
    """Whether process `pid` of this machine is running (when unsure: yes)."""
    if os.name == "nt" or pid <= 0:
        # os.kill would terminate the process on Windows; pid 0 or less are not processes.
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process, running
        return True
    return True


def remove_stale_partials(folder):
    """Removes the temporary files that processes no longer running left in `folder` (not
    in its subfolders); returns their paths.

    Only files named as this module names its temporary files, by a process of this machine
    whose pid no longer runs, are removed: those of a run still writing, of another machine
    or of other programs are kept. A pid reused since by another process keeps its leftovers
    until that process ends.
    """
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    host = _host_tag()
    for name in sorted(names):
        match = _PARTIAL_NAME.match(name)
        if match is None or match["host"] != host or _process_running(int(match["pid"])):
            continue
        path = os.path.join(folder, name)
        try:
            if stat.S_ISREG(os.lstat(path).st_mode):
                os.remove(path)
                removed.append(path)
        except OSError:
            continue  # removed meanwhile by another run's clean-up, or not ours to remove
    return removed


def write_bytes_atomic(path, data, force=False):
    """Writes `data` (bytes) to `path` atomically; an existing file needs `force`.

    Raises ImageWriteError when the file exists (without force) or cannot be written.
    """
    write_files_atomic({path: data}, force=force)


def write_text_atomic(path, text, force=False):
    """Writes `text` as UTF-8 to `path` atomically (e.g. a JSON report); see write_bytes_atomic."""
    write_bytes_atomic(path, text.encode("utf-8"), force=force)
