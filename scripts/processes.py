#!/usr/bin/env python3
"""N separate `constructr node` processes started together, as an operator starts them.

Each process has its own coordination client and its own gossip socket on 127.0.0.1. The
script spawns them all, reads their JSON lines (`constructr node --json`, which stamp each
line with the Unix time in ms and the requests the node sent on the wire so far), and prints
one JSON object:

- `spawn_ms`: from the first spawn until the last process was spawned (subtract it to get
  the protocol's part);
- `registered_ms`, `registered_after_last_spawn_ms`: until every process is registered (its
  first `RefreshScheduled`), from the first spawn and from the last;
- `members_ms`: until every process sees all N members (its gossip view), from the first
  spawn; `null` if some did not within `--members-timeout`;
- `requests_per_node`: wire requests each node sent until it was registered (median and
  max; `null` where the backend does not count them);
- `server_requests_per_node`: unary requests the server handled while the processes
  started, per node, read from etcd's own gRPC counters (`--etcd-metrics URL`) or
  ZooKeeper's packet counter (`--zookeeper-mntr HOST:PORT`);
- `rss_kib`: peak resident set (VmHWM) per process, median and max;
- `distinct_views`: how many distinct member lists the processes report at the end (1 =
  every process sees the same cluster).

    processes.py BIN N -- BACKEND-OPTIONS...   (e.g. --backend etcd --endpoints http://...)

Then every process gets SIGTERM and must exit 0 (a graceful leave).
"""
import argparse
import json
import os
import re
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request


def free_udp_ports(n):
    """n distinct UDP ports that were free a moment ago (bound, then released together)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def etcd_unary(urls):
    """Unary gRPC requests the etcd members (comma-separated URLs) have handled so far (their
    own Prometheus counters)."""
    total = 0
    for url in urls.split(","):
        text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
        for line in text.splitlines():
            if line.startswith("grpc_server_handled_total{") and 'grpc_type="unary"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


def zookeeper_packets(address):
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"mntr")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    m = re.search(rb"zk_packets_received\s+(\d+)", data)
    return float(m.group(1)) if m else None


def vm_hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("bin")
    p.add_argument("nodes", type=int)
    p.add_argument("--cluster", default=f"processes-{os.getpid()}")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--members-timeout", type=float, default=30.0)
    p.add_argument("--etcd-metrics")
    p.add_argument("--zookeeper-mntr")
    p.add_argument("--extra", action="append", default=[], help="an extra option of `constructr node` (e.g. --extra=--compat=constructr)")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    a = p.parse_args(argv[:split])
    backend = argv[split + 1:]
    n = a.nodes

    def server_count():
        """The server's own request count, or None where it cannot be read."""
        try:
            if a.etcd_metrics:
                return etcd_unary(a.etcd_metrics)
            if a.zookeeper_mntr:
                return zookeeper_packets(a.zookeeper_mntr)
        except (OSError, ValueError) as e:
            print(f"processes.py: no server counter: {e}", file=sys.stderr)
        return None

    before = server_count()

    ports = free_udp_ports(n)
    sel = selectors.DefaultSelector()
    procs = []
    env = dict(os.environ, CONSTRUCTR_LOG="error")
    first_spawn = time.time() * 1000
    for port in ports:
        cmd = [a.bin, "--cluster", a.cluster, "node", *backend,
               "--gossip", f"127.0.0.1:{port}", "--json", *a.extra]
        # close_fds=False: posix_spawn, much faster; Python's own descriptors are not
        # inherited anyway (PEP 446).
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL, env=env, close_fds=False)
        os.set_blocking(proc.stdout.fileno(), False)
        sel.register(proc.stdout, selectors.EVENT_READ, len(procs))
        procs.append(proc)
    last_spawn = time.time() * 1000

    registered = {}    # process index -> (unix_ms, requests)
    saw_all = {}       # process index -> unix_ms
    members = {}       # process index -> last member list
    buffers = [b""] * n
    deadline = time.time() + a.timeout
    members_deadline = None
    while time.time() < deadline:
        if len(registered) == n and members_deadline is None:
            members_deadline = time.time() + a.members_timeout
        if len(registered) == n and (len(saw_all) == n or time.time() > members_deadline):
            break
        for key, _ in sel.select(timeout=0.5):
            i = key.data
            try:
                chunk = os.read(key.fileobj.fileno(), 65536)
            except BlockingIOError:
                continue
            if not chunk:
                sel.unregister(key.fileobj)
                continue
            now_ms = time.time() * 1000
            buffers[i] += chunk
            *lines, buffers[i] = buffers[i].split(b"\n")
            for line in lines:
                # A member line lists every member, at every change: with hundreds of
                # processes, parsing them all would take the harness more CPU than the
                # nodes use. Count the members without parsing until they are all there.
                if b'"event":"members"' in line:
                    count = 0 if b'"members":[]' in line else line.count(b'","') + 1
                    if count < n or i in saw_all:
                        continue
                try:
                    d = json.loads(line)
                except ValueError:
                    continue
                # Older builds print no Unix time: the time the line was read instead.
                at = d.get("unix_ms") or now_ms
                members[i] = d.get("members", [])
                if d.get("state") == "RefreshScheduled" and i not in registered:
                    registered[i] = (at, d.get("requests"))
                if len(members[i]) >= n and i not in saw_all:
                    saw_all[i] = at

    after = server_count()
    rss = [r for r in (vm_hwm_kib(proc.pid) for proc in procs) if r is not None]

    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    clean = 0
    for proc in procs:
        try:
            clean += proc.wait(timeout=30) == 0
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    reqs = [r for _, r in registered.values() if r is not None]
    med = lambda xs: statistics.median(xs) if xs else None
    out = {
        "nodes": n,
        "spawn_ms": round(last_spawn - first_spawn, 1),
        "registered": len(registered),
        "registered_ms": round(max(t for t, _ in registered.values()) - first_spawn, 1)
        if len(registered) == n else None,
        "registered_after_last_spawn_ms": round(max(t for t, _ in registered.values()) - last_spawn, 1)
        if len(registered) == n else None,
        "members_ms": round(max(saw_all.values()) - first_spawn, 1) if len(saw_all) == n else None,
        "saw_all_members": len(saw_all),
        "requests_per_node": med(reqs),
        "requests_per_node_max": max(reqs) if reqs else None,
        "server_requests_per_node": round((after - before) / n, 2)
        if before is not None and after is not None else None,
        "rss_kib": med(rss),
        "rss_kib_max": max(rss) if rss else None,
        "distinct_views": len({tuple(m) for m in members.values()}),
        "exited_cleanly": clean,
    }
    print(json.dumps(out))
    return 0 if len(registered) == n and clean == n else 1


if __name__ == "__main__":
    sys.exit(main())
