"""Hosts on one machine, and true network partitions between them (Linux network namespaces).

A :class:`Network` is a bridge in the current (root) network namespace with an address of
its own, and one network namespace per *host*, each joined to the bridge by a veth pair
and given the next address of a private ``/24``. The test process stays in the root
namespace and reaches every host through the bridge; a server runs on a host when its
command is prefixed with :meth:`Network.run_prefix` (``ip netns exec NS``) and it binds
that host's address.

:meth:`Network.partition` cuts a host off from everyone (the other hosts and the test
process) by putting the kernel's ``blackhole`` queueing discipline on both ends of its
veth pair: every packet either way is dropped in silence, the link stays up and no error
reaches a socket, as when a switch or a route between hosts fails. (``netem loss 100%``
does the same where the kernel has ``sch_netem``; this host's kernel has no netem, no
iptables and no nftables, but ``blackhole`` is built into every kernel with traffic
control.) Every host's neighbour table holds every other host's MAC address as a
permanent entry, so ARP never fails during a partition: a failed ARP would answer
connection attempts at once with "No route to host" instead of leaving them unanswered.
:meth:`Network.heal` removes the qdiscs. :meth:`Network.destroy` deletes the namespaces
(which ends their veths) and the bridge.

It needs root and iproute2 (``ip``, ``tc``); otherwise :func:`unavailable` names what is
missing. Nothing here imports pytest.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess
import uuid
from contextlib import suppress
from dataclasses import dataclass, field

from harness.servers import ServerUnavailable


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise ServerUnavailable(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _tc(namespace: str | None, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    result = subprocess.run([*prefix, "tc", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise ServerUnavailable(f"tc {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def unavailable() -> str | None:
    """Why this process cannot build a :class:`Network` (None when it can)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"no {tool}: install iproute2"
    return None


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.64.0.0/10 that no interface of the root namespace is on."""
    used = [
        ipaddress.ip_interface(word).network
        for line in _ip("-4", "-o", "addr").stdout.splitlines()
        for word in line.split()
        if "/" in word and word[0].isdigit()
    ]
    rng = random.Random(uuid.uuid4().int)
    for _ in range(200):
        subnet = ipaddress.ip_network(f"10.{rng.randrange(64, 128)}.{rng.randrange(256)}.0/24")
        if not any(subnet.overlaps(other) for other in used):
            return subnet
    raise ServerUnavailable("no free private /24 for the test network")


@dataclass
class Host:
    """A network namespace on the bridge: its name, address and the two veth ends."""

    name: str
    namespace: str
    address: str
    inner: str  # the veth end inside the namespace
    outer: str  # the veth end on the bridge, in the root namespace
    cut: bool = False


@dataclass
class Network:
    """A bridge with hosts on it; partitions and heals them. Use as a context manager."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    subnet: ipaddress.IPv4Network | None = None
    hosts: dict[str, Host] = field(default_factory=dict)
    bridge_up: bool = False

    @property
    def bridge(self) -> str:
        return f"sbr{self.tag}"

    @property
    def gateway(self) -> str:
        """The bridge's address: where the test process is seen from the hosts."""
        assert self.subnet is not None
        return str(self.subnet[1])

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *_: object) -> None:
        self.destroy()

    def start(self) -> None:
        """Check what is needed and create the bridge (no hosts yet)."""
        reason = unavailable()
        if reason is not None:
            raise ServerUnavailable(reason)
        self.subnet = _free_subnet()
        _ip("link", "add", self.bridge, "type", "bridge")
        self.bridge_up = True
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        # The qdisc the partitions use must exist in this kernel: find out now, not mid-test.
        probe = _tc(None, "qdisc", "add", "dev", self.bridge, "root", "blackhole", check=False)
        if probe.returncode != 0:
            raise ServerUnavailable(f"tc has no blackhole qdisc: {probe.stderr.strip()}")
        _tc(None, "qdisc", "del", "dev", self.bridge, "root")

    def add_host(self, name: str) -> Host:
        """A new namespace on the bridge, with the next free address."""
        assert self.subnet is not None, "start() first"
        index = len(self.hosts) + 2
        host = Host(
            name=name,
            namespace=f"sluice-{self.tag}-{name}",
            address=str(self.subnet[index]),
            inner="eth0",
            outer=f"sv{self.tag}{index}",
        )
        _ip("netns", "add", host.namespace)
        self.hosts[name] = host
        _ip("link", "add", host.outer, "type", "veth", "peer", "name", "tmp" + host.outer)
        _ip("link", "set", "tmp" + host.outer, "netns", host.namespace)
        ns = ["-n", host.namespace]
        _ip(*ns, "link", "set", "tmp" + host.outer, "name", host.inner)
        _ip(*ns, "addr", "add", f"{host.address}/24", "dev", host.inner)
        _ip(*ns, "link", "set", host.inner, "up")
        _ip(*ns, "link", "set", "lo", "up")
        _ip("link", "set", host.outer, "master", self.bridge)
        _ip("link", "set", host.outer, "up")
        self._pin_neighbours()
        return host

    def _mac(self, namespace: str | None, device: str) -> str:
        args = (["-n", namespace] if namespace else []) + ["-o", "link", "show", device]
        words = _ip(*args).stdout.split()
        return words[words.index("link/ether") + 1]

    def _pin_neighbours(self) -> None:
        """Every host (and the bridge) knows every other's MAC for good: no ARP to fail."""
        macs = {h.address: self._mac(h.namespace, h.inner) for h in self.hosts.values()}
        macs[self.gateway] = self._mac(None, self.bridge)
        for address, mac in macs.items():
            for host in self.hosts.values():
                if host.address != address:
                    _ip("-n", host.namespace, "neigh", "replace", address, "lladdr", mac,
                        "dev", host.inner, "nud", "permanent")  # fmt: skip
            if address != self.gateway:
                _ip("neigh", "replace", address, "lladdr", mac, "dev", self.bridge,
                    "nud", "permanent")  # fmt: skip

    def run_prefix(self, host: str) -> list[str]:
        """The words that run a command on ``host`` (prepend them to its argv)."""
        return ["ip", "netns", "exec", self.hosts[host].namespace]

    def partition(self, host: str) -> None:
        """Drop every packet to and from ``host``, silently, until :meth:`heal`."""
        found = self.hosts[host]
        if found.cut:
            return
        _tc(found.namespace, "qdisc", "add", "dev", found.inner, "root", "blackhole")
        _tc(None, "qdisc", "add", "dev", found.outer, "root", "blackhole")
        found.cut = True

    def heal(self, host: str) -> None:
        """Let ``host``'s packets through again."""
        found = self.hosts[host]
        _tc(found.namespace, "qdisc", "del", "dev", found.inner, "root", check=False)
        _tc(None, "qdisc", "del", "dev", found.outer, "root", check=False)
        found.cut = False

    def destroy(self) -> None:
        """Delete every namespace (their veths go with them) and the bridge."""
        for host in list(self.hosts.values()):
            with suppress(ServerUnavailable):
                _ip("link", "del", host.outer, check=False)
                _ip("netns", "del", host.namespace, check=False)
        self.hosts.clear()
        if self.bridge_up:
            _ip("link", "del", self.bridge, check=False)
            self.bridge_up = False
