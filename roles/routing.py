"""The routing role: find peers, share addresses, keep connections healthy.

The lecture's answer to "how does a new node find peers?", with Bitcoin Core's
rules as the reference:

1. DNS seeds (and a built-in fallback list) give the first addresses.
2. After the handshake on an outbound connection the node sends `getaddr`, and
   `addr` with its own address; its neighbours forward a fresh announcement to
   two of theirs, so it spreads through the whole network.
3. Everything heard goes into the address book (SQLite), from which the node
   keeps `--outbound` connections open.

Along the way: keepalive pings, a per-peer misbehaviour score that bans at
100, rate limits on addr, and `getpeerinfo` / `getnetworkinfo` for people.
"""

from __future__ import annotations

import logging
import random
import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from protocol.addresses import format_address, is_routable, listening_scope
from protocol.messages import Error, Ping, Pong, Version
from protocol.messages.addr import MAX_ADDR_ENTRIES, Addr, AddressEntry, GetAddr
from protocol.messages.handshake import NODE_NETWORK
from protocol.messages.peerinfo import GetNetworkInfo, GetPeerInfo, NetworkInfo, PeerInfo, PeerRow
from roles.addrbook import AddressBook
from roles.base import NodeContext, Role
from roles.crawler import probe
from roles.dns_seed import DnsSeedServer, resolve_seed
from roles.peer import Direction, Peer
from roles.seen import SeenFilter

log = logging.getLogger("epscoin.routing")

# Bitcoin Core's numbers, each named where it is used in net_processing.cpp / net.h.
BAN_SCORE = 100  # DISCOURAGEMENT_THRESHOLD
ADDR_RATE_PER_SECOND = 0.1  # MAX_ADDR_RATE_PER_SECOND
ADDR_BUCKET_SIZE = 1000  # MAX_ADDR_PROCESSING_TOKEN_BUCKET
ADDR_RELAY_MAX_ENTRIES = 10  # an addr with more entries is an answer, not an announcement
ADDR_RELAY_FRESHNESS = 600  # seconds: only announcements younger than 10 min travel on
ADDR_RELAY_FANOUT = 2  # peers each fresh announcement is forwarded to
GETADDR_SHARE_PERCENT = 23  # MAX_PCT_ADDR_TO_SEND
KNOWN_ADDRESSES_PER_PEER = 5000  # the per-peer filter of addresses sent to or heard from it
FUTURE_TIME_SLACK = 600  # an addr time this far ahead is a lie: treat it as 5 days old, as Bitcoin does
MIN_PLAUSIBLE_TIME = 100_000_000  # Bitcoin's cut-off for addr times (1973)
SEED_ANSWER_FRESHNESS = 3600  # the DNS seed hands out addresses that answered within the last hour
CRAWL_INTERVAL = 600  # the seeder re-checks an address after 10 minutes
CRAWL_WORKERS = 4  # visits at once
MAX_DISCOVERY_DELAY = 60.0  # seconds between DNS lookups while the node lacks addresses to dial
BAN_REFRESH_INTERVAL = 60.0  # seconds between sweeps of expired bans
SEND_RATE_MARGIN = 0.9  # our copy of a peer's addr bucket refills a little slower than the real one
MAX_HELD_ADDRS = 10  # relays held for a peer whose bucket is empty: the freshest, one announcement's worth

NEVER_BANNED = frozenset({"127.0.0.1", "::1"})  # this machine itself

# The fallback when DNS gives nothing: the demo network's seed node (`node.py --demo` puts it there).
FIXED_SEEDS: tuple[tuple[str, int], ...] = (("127.0.0.2", 5050),)


@dataclass
class RoutingConfig:
    outbound: int = 8  # Bitcoin: 8 full-relay outbound connections
    connect_only: bool = False  # --connect given: dial only those, discover nothing
    dns_seeds: tuple[str, ...] = ()
    dns_server: tuple[str, int] | None = None
    seeds: tuple[tuple[str, int], ...] = ()  # --seed: more fallback addresses
    fixed_seeds: bool = True
    serve_dns: tuple[str, int] | None = None
    dns_zone: str = "seed.epscoin.local"
    ping_interval: float = 120.0  # Bitcoin's PING_INTERVAL
    ping_timeout: float = 1200.0  # Bitcoin's TIMEOUT_INTERVAL
    ban_time: float = 86400.0  # Bitcoin's DEFAULT_MISBEHAVING_BANTIME
    whitelist: frozenset[str] = frozenset()
    announce_interval: float = 86400.0  # Bitcoin's AVG_LOCAL_ADDRESS_BROADCAST_INTERVAL
    default_port: int = 5050
    external: str | None = None  # the IP to announce instead of the listening one (--external)


@dataclass
class PeerRouting:
    """What the routing role knows about one peer."""

    known: SeenFilter = field(default_factory=lambda: SeenFilter(KNOWN_ADDRESSES_PER_PEER))
    tokens: float = 1.0  # addr token bucket: starts at 1, +1000 when we ask with getaddr
    tokens_at: float = field(default_factory=time.monotonic)
    addrs_dropped: int = 0
    getaddr_answered: bool = False
    getaddr_sent: bool = False  # we asked: the next addr is an answer, not announcements to relay
    score: int = 0
    ping_nonce: int | None = None
    ping_sent_at: float = 0.0
    last_ping_at: float = field(default_factory=time.monotonic)
    ping_ms: float | None = None
    last_announce: float = field(default_factory=time.monotonic)
    # Our copy of the peer's addr bucket for us (it drops what finds no token), and the
    # entries held until it has one: the freshest few, newest first (protocol.md §10.5).
    send_tokens: float = 1.0
    send_tokens_at: float = field(default_factory=time.monotonic)
    held: list[AddressEntry] = field(default_factory=list)

    def send_tokens_now(self, now: float) -> float:
        """The tokens the peer's bucket holds for us now, as far as we can tell."""
        if self.send_tokens < ADDR_BUCKET_SIZE:
            self.send_tokens = min(ADDR_BUCKET_SIZE, self.send_tokens
                                   + (now - self.send_tokens_at) * ADDR_RATE_PER_SECOND * SEND_RATE_MARGIN)
        self.send_tokens_at = now
        return self.send_tokens

    def take_send_tokens(self, now: float, wanted: int) -> int:
        """How many of `wanted` addr entries the peer will accept now (and count them as sent)."""
        granted = max(0, min(wanted, int(self.send_tokens_now(now))))
        self.send_tokens -= granted
        return granted

    def hold(self, entry: AddressEntry) -> None:
        """Keep entry until the peer can take it; only the MAX_HELD_ADDRS freshest stay, newest first."""
        if any(e.addr == entry.addr and e.time >= entry.time for e in self.held):
            return
        others = [e for e in self.held if e.addr != entry.addr]
        self.held = sorted([entry, *others], key=lambda e: -e.time)[:MAX_HELD_ADDRS]  # stable: entry wins ties

    def take_token(self, now: float) -> bool:
        # As Bitcoin: the refill stops at the bucket size, but a getaddr bonus may lift it above.
        if self.tokens < ADDR_BUCKET_SIZE:
            self.tokens = min(ADDR_BUCKET_SIZE, self.tokens + (now - self.tokens_at) * ADDR_RATE_PER_SECOND)
        self.tokens_at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class RoutingRole(Role):
    name = "routing"
    services = NODE_NETWORK

    def __init__(self, node: NodeContext, settings: RoutingConfig | None = None) -> None:
        super().__init__(node)
        self.config = settings or RoutingConfig()
        self.book = AddressBook(node.data_path / "peers.sqlite")
        self.own_address = node.listen_address
        self.scope = listening_scope(self.own_address[0])
        self._lock = threading.Lock()  # guards _state, _outbound_slots, _bans, counters
        self._state: dict[Peer, PeerRouting] = {}
        self._outbound_slots: set[str] = set()  # addresses our dial threads hold (connecting or connected)
        self._bans: dict[str, int] = {}  # host -> banned until (unix seconds), mirrored from the book
        self.addrs_dropped = 0
        self._next_discovery = 0.0
        self._discovery_delay = 2.0
        self._discovering = False
        self._next_ban_sweep = 0.0
        self._crawling: set[str] = set()
        self._crawler: ThreadPoolExecutor | None = None
        self._dns_server: DnsSeedServer | None = None

    # -- life cycle ----------------------------------------------------------------

    def start(self) -> None:
        self.book.forget_expired_bans()
        with self._lock:
            self._bans = self.book.active_bans()
        if self.config.serve_dns is not None:
            self._dns_server = DnsSeedServer(self.config.serve_dns, self.config.dns_zone, self._seed_answer)
            self._dns_server.start()
            self._crawler = ThreadPoolExecutor(CRAWL_WORKERS, thread_name_prefix="crawler")

    def stop(self) -> None:
        if self._dns_server is not None:
            self._dns_server.stop()
        if self._crawler is not None:
            self._crawler.shutdown(wait=False, cancel_futures=True)
        self.book.close()

    def refuses_inbound(self, host: str) -> str | None:
        if host in self.config.whitelist:
            return None
        with self._lock:
            until = self._bans.get(host)
        if until is not None and until > time.time():
            return f"banned until {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(until))}"
        return None

    # -- peers come and go -----------------------------------------------------------

    def on_connect(self, peer: Peer) -> None:
        with self._lock:
            self._state[peer] = PeerRouting()

    def on_disconnect(self, peer: Peer) -> None:
        with self._lock:
            self._state.pop(peer, None)

    def on_ready(self, peer: Peer) -> None:
        version = peer.version
        if not version.services & NODE_NETWORK:
            return  # a chat client: no addresses, no book entry
        if self._drop_if_duplicate(peer):
            return
        if peer.direction is Direction.OUTBOUND:
            self.book.record_success(peer.host, peer.port, version.services, source=peer.host)
            state = self._peer_state(peer)
            state.tokens += ADDR_BUCKET_SIZE  # we asked: a full answer is welcome
            state.getaddr_sent = True
            peer.send(GetAddr())
            self._announce_self(peer)

    def _drop_if_duplicate(self, peer: Peer) -> bool:
        """Collapse a second connection to the same node (known by its version nonce); True if peer went.

        Outbound peers are chosen independently of inbound ones, as in Bitcoin (an
        attacker who dials us must not decide whom we dial), so A->B and B->A may
        both stand. Two cases are waste and are collapsed:
        - two outbound connections to one node (through two of its addresses): keep the older;
        - crossing dials, both handshakes under way at once: keep the one dialled by the
          node with the larger nonce; both ends compute the same answer.
        """
        theirs = peer.version.nonce
        if theirs == 0:
            return False
        for twin in self.node.ready_peers():
            if twin is peer or twin.version.nonce != theirs:
                continue
            if twin.direction is peer.direction:
                if peer.direction is Direction.OUTBOUND:
                    self.node.disconnect(peer, "duplicate connection: already connected to this node")
                    return True
                continue  # two inbound: the dialler collapses its own pair
            if peer.connected_monotonic < twin.ready_at:  # peer began before twin finished: crossing
                dialled_by_larger = Direction.OUTBOUND if self.node.nonce > theirs else Direction.INBOUND
                loser = peer if peer.direction is not dialled_by_larger else twin
                self.node.disconnect(loser, "duplicate connection: we dialled each other at the same time")
                return loser is peer
        return False

    def _peer_state(self, peer: Peer) -> PeerRouting:
        with self._lock:
            return self._state.setdefault(peer, PeerRouting())

    # -- addr gossip -------------------------------------------------------------------

    def on_addr(self, peer: Peer, message: Addr) -> None:
        state = self._peer_state(peer)
        now_mono, now = time.monotonic(), int(time.time())
        accepted: list[tuple[str, int, int, int]] = []
        relay: list[AddressEntry] = []
        # An answer to our getaddr is not news to spread, however small (Bitcoin's m_getaddr_sent).
        announcement = len(message.addrs) <= ADDR_RELAY_MAX_ENTRIES and not state.getaddr_sent
        if len(message.addrs) < MAX_ADDR_ENTRIES:
            state.getaddr_sent = False
        for entry in message.addrs:
            with self._lock:
                allowed = state.take_token(now_mono)
                if not allowed:
                    state.addrs_dropped += 1
                    self.addrs_dropped += 1
            if not allowed:
                continue
            state.known.add(entry.addr)
            host, port = entry.host_port
            if not self._worth_keeping(host, port):
                continue
            # As Bitcoin: a time in the future or before 1973 is a lie; call it five days old.
            sane = MIN_PLAUSIBLE_TIME < entry.time <= now + FUTURE_TIME_SLACK
            seen_at = entry.time if sane else now - 5 * 86400
            accepted.append((host, port, entry.services, seen_at))
            if announcement and 0 <= now - entry.time <= ADDR_RELAY_FRESHNESS:
                relay.append(entry)
        if accepted:
            self.book.add(accepted, source=peer.host)
        for entry in relay:
            self._relay(entry, source=peer)

    def _worth_keeping(self, host: str, port: int) -> bool:
        own = {self.own_address, (self.config.external, self.own_address[1])}
        return is_routable(host, self.scope) and (host, port) not in own and 0 < port

    def _relay(self, entry: AddressEntry, source: Peer) -> None:
        """Forward a fresh announcement to two random node peers that have not seen it.

        The two are drawn first from the neighbours whose bucket takes the entry now, so it
        travels on at once wherever it can; only when fewer than two can take it is it held
        for the others, until their buckets refill (protocol.md §10.5, "Pacing").
        """
        now = time.monotonic()
        links = self._relay_links(entry.addr, source, now)
        with self._lock:
            ready = [peer for peer, state in links if state.send_tokens_now(now) >= 1]
        waiting = [peer for peer, _ in links if peer not in ready]
        chosen = random.sample(ready, min(ADDR_RELAY_FANOUT, len(ready)))
        chosen += random.sample(waiting, min(ADDR_RELAY_FANOUT - len(chosen), len(waiting)))
        states = dict(links)
        for target in chosen:
            self._offer(target, states[target], entry, now)

    def _relay_links(self, address: str, source: Peer, now: float) -> list[tuple[Peer, PeerRouting]]:
        """One connection to each node peer that may get address: not source's node, none of its links knows it.

        A->B and B->A are one neighbour. Of the two, take the one whose bucket for us holds
        more: the link the other node dialled, after its getaddr, takes 1,000 entries at once;
        the link we dialled, 1 and then 0.1 a second.
        """
        by_node: dict[int, list[Peer]] = {}
        for peer in self.node.ready_peers():
            if peer.version.services & NODE_NETWORK and peer is not source:
                by_node.setdefault(_node_key(peer), []).append(peer)
        by_node.pop(_node_key(source), None)
        links = []
        for peers in by_node.values():
            states = [(peer, self._peer_state(peer)) for peer in peers]
            if any(address in state.known for _, state in states):
                continue
            with self._lock:
                links.append(max(states, key=lambda link: link[1].send_tokens_now(now)))
        return links

    def _offer(self, peer: Peer, state: PeerRouting, entry: AddressEntry, now: float) -> None:
        """Send entry to peer now if its bucket takes it, else hold it there until tick() can."""
        with self._lock:
            state.hold(entry)
        self._send_held(peer, state, now)

    def _send_held(self, peer: Peer, state: PeerRouting, now: float) -> None:
        """Send what peer's bucket takes now of its held entries, newest first, up to 10 in one addr.

        An entry is marked known only here, when it leaves: until then another node may still
        bring it to this peer. Entries the peer has sent us meanwhile, and entries no longer
        fresh (the peer would not relay them on), are dropped.
        """
        wall = int(time.time())
        with self._lock:
            state.held = [e for e in state.held
                          if 0 <= wall - e.time <= ADDR_RELAY_FRESHNESS and e.addr not in state.known]
            count = state.take_send_tokens(now, min(len(state.held), ADDR_RELAY_MAX_ENTRIES))
            batch, state.held = state.held[:count], state.held[count:]
        for entry in batch:
            state.known.add(entry.addr)
        if batch:
            peer.send(Addr(addrs=tuple(batch)))

    def on_getaddr(self, peer: Peer, message: GetAddr) -> None:
        state = self._peer_state(peer)
        if peer.direction is Direction.OUTBOUND or state.getaddr_answered:
            # Bitcoin ignores these (answering would help fingerprint the node); a person gets a reason.
            peer.send(Error("getaddr is answered once per inbound connection", about="getaddr"))
            return
        state.getaddr_answered = True
        count = min(MAX_ADDR_ENTRIES, self.book.count() * GETADDR_SHARE_PERCENT // 100)
        entries = [AddressEntry(addr=e.address, services=e.services, time=e.last_seen)
                   for e in self.book.sample(count) if e.host != peer.host]
        for entry in entries:
            state.known.add(entry.addr)
        with self._lock:
            state.send_tokens += ADDR_BUCKET_SIZE  # it asked: its bucket has room for the answer
            state.take_send_tokens(time.monotonic(), len(entries))
        peer.send(Addr(addrs=tuple(entries)))

    def _announce_self(self, peer: Peer) -> None:
        host, port = self.config.external or self.own_address[0], self.own_address[1]
        if not is_routable(host, self.scope):
            return  # listening on 0.0.0.0 or similar: no address others could dial
        entry = AddressEntry(addr=format_address(host, port), services=self.node.services, time=int(time.time()))
        self._offer(peer, self._peer_state(peer), entry, time.monotonic())

    # -- misbehaviour and bans -------------------------------------------------------

    def on_misbehaving(self, peer: Peer, points: int, reason: str) -> None:
        state = self._peer_state(peer)
        with self._lock:
            state.score += points
            score = state.score
        log.warning("[MISBEHAVING] %s +%d (%s): score %d", peer.address, points, reason, score)
        if score < BAN_SCORE or peer.host in self.config.whitelist:
            return
        if peer.host in NEVER_BANNED:
            # As Bitcoin never discourages local peers: banning 127.0.0.1 would lock out
            # every program on the person's own machine. (The demo's 127.0.0.2+ hosts stand
            # for separate machines and are banned like any other.)
            self.node.disconnect(peer, f"misbehaving: {reason} (not banned: local address)")
            return
        until = self.book.ban(peer.host, self.config.ban_time, reason)
        with self._lock:
            self._bans[peer.host] = until
        log.warning("[BANNED] %s for %g s: %s", peer.host, self.config.ban_time, reason)
        for other in self.node.peers():
            if other.host == peer.host:
                self.node.disconnect(other, f"banned for {self.config.ban_time:g} s: {reason}")

    # -- keepalive ---------------------------------------------------------------------

    def on_pong(self, peer: Peer, message: Pong) -> None:
        state = self._peer_state(peer)
        with self._lock:
            if state.ping_nonce is not None and message.nonce == state.ping_nonce:
                state.ping_ms = (time.monotonic() - state.ping_sent_at) * 1000
                state.ping_nonce = None

    def _keepalive(self, now: float) -> None:
        for peer in self.node.ready_peers():
            state = self._peer_state(peer)
            with self._lock:
                waiting = state.ping_nonce is not None
                overdue = waiting and now - state.ping_sent_at > self.config.ping_timeout
                due = not waiting and now - state.last_ping_at >= self.config.ping_interval
                if due:
                    state.ping_nonce = secrets.randbits(63)
                    state.ping_sent_at = state.last_ping_at = now
            if overdue and peer.version.services & NODE_NETWORK:
                # Only nodes are held to it: the lecture's client never reads, let alone answers.
                self.node.disconnect(peer, f"ping timeout: no pong within {self.config.ping_timeout:g} s")
            elif overdue:
                with self._lock:
                    state.ping_nonce = None  # a client: forget this ping, try again next interval
            elif due:
                peer.send(Ping(nonce=state.ping_nonce))

    # -- people's questions --------------------------------------------------------------

    def on_getpeerinfo(self, peer: Peer, message: GetPeerInfo) -> None:
        rows = []
        for other in self.node.peers():
            state = self._peer_state(other)
            version = other.version
            rows.append(PeerRow(
                address=other.address, direction=other.direction.value,
                services=version.services if version else 0,
                user_agent=version.user_agent if version else "",
                version=version.version if version else 0, height=version.height if version else 0,
                ping_ms=round(state.ping_ms, 3) if state.ping_ms is not None else None,
                bytes_sent=other.bytes_sent, bytes_received=other.bytes_received,
                connected_since=int(other.connected_at), score=state.score))
        peer.send(PeerInfo(peers=tuple(rows)))

    def on_getnetworkinfo(self, peer: Peer, message: GetNetworkInfo) -> None:
        peers = self.node.peers()
        with self._lock:
            banned = sum(1 for until in self._bans.values() if until > time.time())
            dropped = self.addrs_dropped
        peer.send(NetworkInfo(
            address=format_address(*self.own_address), user_agent=self.node.version_message().user_agent,
            peers=len(peers), inbound=sum(p.direction is Direction.INBOUND for p in peers),
            outbound=sum(p.direction is Direction.OUTBOUND for p in peers),
            addresses_known=self.book.count(), banned=banned, addrs_dropped=dropped))

    # -- periodic work --------------------------------------------------------------------

    def tick(self, now: float) -> None:
        for peer in self.node.ready_peers():
            state = self._peer_state(peer)
            if state.held:
                self._send_held(peer, state, now)
        self._keepalive(now)
        self._announce_periodically(now)
        if not self.config.connect_only:
            self._keep_outbound(now)
        if self._crawler is not None:
            self._crawl()
        if now >= self._next_ban_sweep:
            self._next_ban_sweep = now + BAN_REFRESH_INTERVAL
            self.book.forget_expired_bans()
            bans = self.book.active_bans()  # also picks up bans lifted by hand in peers.sqlite
            with self._lock:
                self._bans = bans

    def _announce_periodically(self, now: float) -> None:
        for peer in self.node.ready_peers():
            if not peer.version.services & NODE_NETWORK:
                continue
            state = self._peer_state(peer)
            if now - state.last_announce >= self.config.announce_interval:
                state.last_announce = now
                # As Bitcoin's MaybeSendAddr: forget what the peer was sent or told, so that this
                # announcement, and the relays of the others' announcements, go out again.
                state.known = SeenFilter(KNOWN_ADDRESSES_PER_PEER)
                self._announce_self(peer)

    def _keep_outbound(self, now: float) -> None:
        with self._lock:
            missing = self.config.outbound - len(self._outbound_slots)
            taken = set(self._outbound_slots)
        if missing <= 0 or self.node.stopping:
            return
        taken.add(format_address(*self.own_address))
        found = self.book.candidates(missing + len(taken), exclude=taken)
        candidates = [entry for entry in found if not self.node.connected_to_node_at(entry.host, entry.port)]
        if len(candidates) < missing:
            # Nobody else to dial (a small network): dial a node connected to us only the other way,
            # as Bitcoin would; never one we already reach outbound.
            candidates += [entry for entry in found if entry not in candidates and
                           not self.node.connected_to_node_at(entry.host, entry.port, Direction.OUTBOUND)]
        candidates = candidates[:missing]
        if len(candidates) < missing and now >= self._next_discovery:
            self._next_discovery = now + self._discovery_delay
            self._discovery_delay = min(self._discovery_delay * 2, MAX_DISCOVERY_DELAY)
            self._discover()
        for entry in candidates:
            with self._lock:
                if entry.address in self._outbound_slots:
                    continue
                self._outbound_slots.add(entry.address)
            threading.Thread(target=self._dial, args=(entry.host, entry.port), daemon=True,
                             name=f"dial-{entry.address}").start()

    def _dial(self, host: str, port: int) -> None:
        address = format_address(host, port)
        try:
            self.book.record_attempt(address)
            self.node.open_outbound(host, port)  # runs the whole connection on this thread
        finally:
            with self._lock:
                self._outbound_slots.discard(address)

    def _discover(self) -> None:
        """Ask the DNS seeds (on a thread: DNS may take seconds); fall back to the fixed seeds."""
        with self._lock:
            if self._discovering:
                return
            self._discovering = True
        threading.Thread(target=self._discover_now, name="discovery", daemon=True).start()

    def _discover_now(self) -> None:
        try:
            found: list[tuple[str, int]] = []
            for name in self.config.dns_seeds:
                addresses = resolve_seed(name, self.config.dns_server, self.config.default_port)
                log.info("[DNS] %s gave %d address%s", name, len(addresses), "" if len(addresses) == 1 else "es")
                found += addresses
            source = "dns"
            if not found:
                found = [resolved for host, port in self.config.seeds for resolved in _resolve(host, port)]
                found += list(FIXED_SEEDS) if self.config.fixed_seeds else []
                source = "seed"
            now = int(time.time())
            self.book.add([(host, port, NODE_NETWORK, now) for host, port in found
                           if self._worth_keeping(host, port)], source=source)
        finally:
            with self._lock:
                self._discovering = False

    # -- the DNS seed and its crawler -------------------------------------------------------

    def _seed_answer(self) -> list[str]:
        """IPs for a DNS answer: this node itself first, then peers that answered recently, at random."""
        ips = [entry.host for entry in self.book.recently_successful(SEED_ANSWER_FRESHNESS, 4 * 32)
               if entry.port == self.config.default_port]
        random.shuffle(ips)
        own_host, own_port = self.own_address
        if own_port == self.config.default_port and is_routable(own_host, self.scope):
            ips.insert(0, own_host)
        return list(dict.fromkeys(ips))

    def _crawl(self) -> None:
        with self._lock:
            free = CRAWL_WORKERS - len(self._crawling)
        if free <= 0:
            return
        for entry in self.book.due_for_crawl(CRAWL_INTERVAL, free + len(self._crawling)):
            with self._lock:
                if entry.address in self._crawling or len(self._crawling) >= CRAWL_WORKERS:
                    continue
                self._crawling.add(entry.address)
            self.book.record_attempt(entry.address)
            self._crawler.submit(self._visit, entry.host, entry.port)

    def _visit(self, host: str, port: int) -> None:
        try:
            # A visitor, not a peer: a nonce of its own and no services, so the visited
            # node neither relays to it nor mistakes it for a second link to this node.
            ours = self.node.version_message()
            visitor = Version(nonce=secrets.randbits(63) | 1, user_agent=ours.user_agent, time=ours.time)
            result = probe(host, port, visitor, source_address=self.node.source_address)
            if result is None:
                return
            self.book.record_success(host, port, result.version.services, source="crawler")
            self.book.add([(*entry.host_port, entry.services, min(entry.time, int(time.time())))
                           for entry in result.addresses if self._worth_keeping(*entry.host_port)],
                          source=host)
        finally:
            with self._lock:
                self._crawling.discard(format_address(host, port))


def _node_key(peer: Peer) -> int:
    """The same for every connection to one node: its version nonce (a nonce of 0 proves nothing)."""
    return peer.version.nonce or id(peer)


def _resolve(host: str, port: int) -> list[tuple[str, int]]:
    """A --seed given by name, as the IPs the system resolver knows for it (empty if none)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        log.warning("[DNS] cannot resolve seed %s", host)
        return []
    return list(dict.fromkeys((info[4][0], port) for info in infos))
