"""
What a loopback send of one HTTP response costs the sender: ``sendmsg([head, body])`` (what
a memory hit does) against ``send(head, MSG_MORE)`` + ``sendfile`` of the body from a
``memfd`` (what nginx does with its cache file). A child process reads and discards
everything; the parent's CPU time per response is printed, each way ``--rounds`` times,
alternating (take the best of each: a shared machine only adds time). 127.0.0.1 only.
Example::

    .venv/bin/python bench/sendfile_probe.py --size 102400 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import resource
import socket


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def once(way: str, size: int, count: int) -> float:
    """:returns: the sender's CPU µs per response, ``count`` responses of ``size`` bytes."""
    body = os.urandom(size)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size
    fd = os.memfd_create("probe")
    os.pwrite(fd, body, 0)
    listener = socket.create_server(("127.0.0.1", 0))
    total = count * (len(head) + size)
    child = os.fork()
    if child == 0:  # the reader: everything, then exit
        reader = socket.create_connection(listener.getsockname())
        buffer = bytearray(1 << 20)
        got = 0
        while got < total:
            n = reader.recv_into(buffer)
            if not n:
                break
            got += n
        os._exit(0)
    sender, _ = listener.accept()
    started = _cpu()
    for _ in range(count):
        if way == "sendmsg":
            sender.sendmsg([head, body])
        else:
            sender.send(head, socket.MSG_MORE)
            offset = 0
            while offset < size:
                offset += os.sendfile(sender.fileno(), fd, offset, size - offset)
    spent = _cpu() - started
    os.waitpid(child, 0)
    sender.close()
    listener.close()
    os.close(fd)
    return spent / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=100 * 1024, help="body bytes")
    parser.add_argument("--count", type=int, default=30_000, help="responses per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    a = parser.parse_args()
    best = {"sendmsg": float("inf"), "sendfile": float("inf")}
    for _ in range(a.rounds):
        for way in best:
            spent = once(way, a.size, a.count)
            best[way] = min(best[way], spent)
            print(f"{way:8} {spent:6.2f} µs per response", flush=True)
    print(f"best: sendmsg {best['sendmsg']:.2f} µs, sendfile {best['sendfile']:.2f} µs")


if __name__ == "__main__":
    main()
