import os

from workers.vendors.http import ProcessLocal


def test_one_object_per_key_within_a_process() -> None:
    cache: ProcessLocal[object] = ProcessLocal()
    first = cache.get("a", object)
    assert cache.get("a", object) is first
    assert cache.get("b", object) is not first


def test_a_forked_child_builds_its_own() -> None:
    cache: ProcessLocal[object] = ProcessLocal()
    parent_item = cache.get("a", object)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must not see the parent's object
        same = cache.get("a", object) is parent_item
        os.write(write, b"same" if same else b"new")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 8)
    os.waitpid(pid, 0)
    assert answer == b"new"
    assert cache.get("a", object) is parent_item
