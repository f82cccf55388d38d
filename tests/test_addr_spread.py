"""Address relay after a bootstrap: a new node's address must not wait behind the bootstrap's.

A bootstrap of 20 nodes sends hundreds of relays, and a receiver takes only 1
entry, and then 0.1 a second, over a link the sender dialled (protocol.md
§10.4). So when the network has formed, many links are out of tokens for a
while. A new announcement must still reach every book at once, the DNS seed's
too: every node dialled the seed first, and all those links are out of tokens.

Four newcomers join at once, each with `--connect` to another member (never the
seed), so their addresses reach the others only through relays. Joining by DNS,
a newcomer would dial 8 of the 20 itself and announce itself to each, which
hides a relay that waits behind old entries (such a newcomer was in every book
after 2.1 s even then). Through a single member, the relays of one address form
a random cascade, and with the old queue only its steps over links that have a
token go on at once: one newcomer let the old code pass in 2 of 6 runs, four
let it pass in none of 6.

Measured on a 2-core machine, also at a load average of 10-16: the 20 nodes
listen 3-16 s after they are spawned and have settled (8 outbound each, a
connected graph, every member in every book) about 4 s after that; the four
addresses are in all 20 books 4-90 ms after the last newcomer listens. With the
relay of commit 18a0692, which queued behind the bootstrap's entries, every book
lacked 1-4 of the four after 5 s (and one newcomer reached 1, 11 and 17 of the
20 books in 30 s); with one that relayed only to peers with a token and chose
one link per node blindly, only the seed's book lacked them, all four.

About 10-20 s in all. The node logs and data directories stay under pytest's
basetemp (addr-spread0/).
"""

from __future__ import annotations

import pytest

from tests.network_tools import (Check, Network, NodeSpec, SpawnedNode, Subnet, book_addresses, books_check,
                                 converged_check, start_dns_network, wait_for)
from tests.test_network import OUTBOUND, report, require_loopback_subnets

NODES = 20
SETTLE_BOUND = 90.0  # s from the last node listening to a settled network (measured about 4)
NEWCOMERS = 4  # nodes joining at once, each through another member (see the module's docstring)
SPREAD_BOUND = 5.0  # s from the last newcomer listening to all of them in every book (measured 4-90 ms)


def settled(network: Network, nodes: list[SpawnedNode]) -> Check:
    """The bootstrap is over: every node keeps its outbound peers, and every member is in every book.

    Relays that the senders still hold for peers out of tokens cannot be seen from outside, and
    need not be: the point is that a new announcement does not wait behind them.
    """
    graph = converged_check(network, nodes, OUTBOUND)
    if not graph.ok:
        return graph
    return books_check(nodes, {node.listen for node in nodes})


@pytest.mark.timeout(180)
def test_nodes_joining_a_settled_network_through_one_member_each_are_in_every_book_the_seeds_included_at_once(
        tmp_path_factory: pytest.TempPathFactory):
    require_loopback_subnets()
    network = Network(tmp_path_factory.mktemp("addr-spread"))
    try:
        subnet = Subnet()
        nodes = start_dns_network(network, [subnet.ip(k) for k in range(2, 2 + NODES)], "seed.test")
        took = wait_for(lambda: settled(network, nodes), SETTLE_BOUND, f"{NODES} nodes to settle")
        report(f"{NODES} nodes settled {took:.1f} s after the last listened")

        seed, entries = nodes[0], nodes[-NEWCOMERS:]  # members, never the seed
        hosts = [subnet.ip(2 + NODES + i) for i in range(NEWCOMERS)]
        wanted = {f"{host}:{seed.port}" for host in hosts}
        assert not any(wanted & book_addresses(node) for node in nodes), "known before they started?"
        network.start([NodeSpec(f"n-{host}", host, ("--connect", entry.listen, "--no-fixed-seeds"))
                       for host, entry in zip(hosts, entries)])
        took = wait_for(lambda: books_check(nodes, wanted), SPREAD_BOUND,
                        f"{NEWCOMERS} newcomers, each linked to one member only, in every book", interval=0.02)
        assert wanted <= book_addresses(seed)
        report(f"{NEWCOMERS} newcomers, each linked to one member only, were in all {NODES} books, the seed's "
               f"included, {took * 1000:.0f} ms after the last listened (bound {SPREAD_BOUND:g} s)")
    finally:
        network.kill_all()
