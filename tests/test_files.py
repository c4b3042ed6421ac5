"""`edge.files.read_file`: the one reader of small files, its limits and its one-line errors in the caller's class."""

import os

import pytest

from edge.errors import DataError, EdgeError
from edge.files import read_file


class KeyTrouble(EdgeError):
    pass


def test_reads_the_whole_file(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 100_000)
    assert read_file(tmp_path / "a.bin", "thing", 100_000) == b"x" * 100_000
    (tmp_path / "empty").write_bytes(b"")
    assert read_file(tmp_path / "empty", "thing", 10) == b""


def test_each_refusal_is_one_line_of_the_callers_class(tmp_path):
    with pytest.raises(KeyTrouble, match=r"^key file not found: .*nothing\.key \(make one\)$"):
        read_file(tmp_path / "nothing.key", "key file", 10, KeyTrouble, missing_hint=" (make one)")
    with pytest.raises(KeyTrouble, match=r"^key file .* is a directory$"):
        read_file(tmp_path, "key file", 10, KeyTrouble)
    (tmp_path / "big").write_bytes(b"x" * 11)
    with pytest.raises(DataError, match=r"^bundle .*big is 11 bytes; the limit is 10 bytes$"):
        read_file(tmp_path / "big", "bundle", 10)


def test_a_file_without_a_size_is_counted_while_read():
    with pytest.raises(DataError, match=r"^stream /dev/zero is more than 100,000 bytes; the limit is 100,000 bytes$"):
        read_file("/dev/zero", "stream", 100_000)


def test_a_symbolic_link_is_followed_unless_refused(tmp_path):
    (tmp_path / "real").write_bytes(b"key")
    os.symlink(tmp_path / "real", tmp_path / "link")
    assert read_file(tmp_path / "link", "sealing key", 10) == b"key"
    with pytest.raises(KeyTrouble, match=r"^sealing key .*link is a symbolic link: refused$"):
        read_file(tmp_path / "link", "sealing key", 10, KeyTrouble, follow_symlinks=False)
    os.symlink(tmp_path / "gone", tmp_path / "dangling")
    with pytest.raises(KeyTrouble, match=r"^sealing key .*dangling is a symbolic link: refused$"):
        read_file(tmp_path / "dangling", "sealing key", 10, KeyTrouble, follow_symlinks=False)


def test_check_sees_the_opened_files_status_before_it_is_read(tmp_path):
    path = tmp_path / "device.key"
    path.write_bytes(b"secret")
    os.chmod(path, 0o644)

    def private(st):
        if st.st_mode & 0o077:
            raise KeyTrouble(f"key file {path} has permissions {st.st_mode & 0o777:04o}")

    with pytest.raises(KeyTrouble, match="has permissions 0644"):
        read_file(path, "key file", 100, KeyTrouble, check=private)
    os.chmod(path, 0o600)
    assert read_file(path, "key file", 100, KeyTrouble, check=private) == b"secret"
