"""Loopback endpoints for the benchmark scripts (imported from scripts/, which Python puts
on the path of a script run from there)."""
import socket


def free_endpoints(n):
    """n loopback endpoints on distinct free ports: every socket is held until all are
    bound, so no two picks can be the same port."""
    held = [socket.socket() for _ in range(n)]
    try:
        for s in held:
            s.bind(("127.0.0.1", 0))
        return ["tcp://127.0.0.1:%d" % s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()
