"""Files written whole or not at all: a temporary file beside the target, renamed over it on success."""

import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ""):
    """Yield a temporary path in `path`'s folder (created if missing) to write to; when the block ends
    without error it replaces `path` with the usual permissions, otherwise it is removed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str, data, indent: int = 2) -> str:
    """`data` as JSON (UTF-8, non-ASCII kept) at `path`, atomically."""
    with atomic_path(path, ".json") as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=indent, ensure_ascii=False)
        f.write("\n")
    return path


def check_writable_folder(path: str, what: str = "output", file: str | None = None) -> str:
    """`path`, a folder to write in (missing folders are created later), if it can take a new file, else a
    ValueError naming it (or `file`, the file to be written there). Probed by creating (and removing) a
    temporary file in the nearest existing folder, since os.access says yes to root on /proc or a read-only
    mount."""
    name = path if file is None else file
    folder = os.path.abspath(path)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"{what} {name!r}: {folder!r} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".tmp-probe-", dir=folder)
    except OSError as err:
        raise ValueError(f"{what} {name!r}: cannot write in {folder!r} ({err.strerror})") from None
    os.close(fd)
    os.remove(probe)
    return path


def read_text(path: str, what: str = "file") -> str:
    """A UTF-8 text file's contents; a missing file or one that is not UTF-8 is a ValueError naming the file and
    the line, so a command can print one line instead of a UnicodeDecodeError traceback."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ValueError(f"{what} {path!r}: {err.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise ValueError(f"{path}, line {line}, column {column}: not UTF-8 text (byte 0x{data[err.start]:02x}); "
                         "save the file as UTF-8") from None


def load_json(path: str, what: str = "JSON file"):
    """A JSON file's value; text that does not parse is a ValueError naming the file, line and column."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}, line {err.lineno}, column {err.colno}: not valid JSON ({err.msg})") from None


def load_yaml(path: str, what: str = "YAML config") -> dict:
    """A YAML file's mapping, as plain Python values (omegaconf's loader: interpolations resolved); text that
    does not parse, or is not a mapping, is a ValueError naming the file (and the line where YAML says)."""
    import io

    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    text = read_text(path, what)
    try:
        values = OmegaConf.to_container(OmegaConf.load(io.StringIO(text)), resolve=True)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{path}{where}: not valid YAML ({problem})") from None
    except OmegaConfBaseException as err:
        raise ValueError(f"{path}: {str(err).splitlines()[0]}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a {what} must be a mapping of field: value, got a {type(values).__name__}")
    return values
