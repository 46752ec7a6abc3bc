"""write_text_atomic from several writers at once: two study processes sharing one ``--out`` both
save its config.json; neither may fail or leave a half-written file or a temporary behind."""

from __future__ import annotations

import threading

import pytest

from nasdm_aug.utils import write_text_atomic


def test_concurrent_writers_of_one_file_all_succeed_and_leave_a_whole_file(tmp_path):
    path = tmp_path / "config.json"
    texts = [f"writer {i}\n" * 2000 for i in range(6)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(texts))

    def write(text: str) -> None:
        start.wait()
        try:
            for _ in range(150):
                write_text_atomic(path, text)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert path.read_text() in texts  # one writer's whole text, never a mix or a truncation
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "record.json"
    write_text_atomic(path, "old\n")
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(path, "\ud800")  # a lone surrogate cannot be encoded as UTF-8
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]
