"""A deliberately naive node in the style of the lecture's code, for the conformance suite to fail.

    python tests/lecture_node.py PORT        (PORT 0 picks a free port; the line
                                              "[LISTENING] Node is listening on HOST:PORT" names it)

It keeps the lecture's defects on purpose, so that
tests/test_conformance_catches_naive_node.py can show the conformance suite
(tests/conformance) reporting them:

- `conn.recv(HEADER)` and `conn.recv(msg_length)` are single calls, without a
  loop: a short read (a frame arriving in pieces) is taken for a whole header
  or payload;
- `int()` on the header, so "+4", " 4" and "1_0" pass and "abc" raises;
- no checks and no error frames: anything unexpected raises in the peer's
  thread, which dies and leaves the peer without an answer;
- two `send()` calls per frame (header, then payload) and no TCP_NODELAY, so
  Nagle's algorithm and the peer's delayed ACK add ~40 ms to each reply;
- no timeouts, no relay, no limits.

Just enough protocol to be testable: `version` gets a version and a verack,
`ping` gets a pong (with the nonce), anything else gets an ack, and `!exit`
ends the connection, as in the lecture. This file is not part of epscoin.
"""

import json
import random
import socket
import sys
import threading

HEADER = 64
PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 5050
NODE = "127.0.0.1"  # the lecture uses socket.gethostbyname(socket.gethostname()); tests stay on loopback
ADDR = (NODE, PORT)
FORMAT = 'utf-8'
DISCONNECT_MESSAGE = "!exit"
NONCE = random.getrandbits(64) | 1


def send(conn, msg):
    message = msg.encode(FORMAT)
    msg_length = len(message)
    send_length = str(msg_length).encode(FORMAT)
    send_length += b' ' * (HEADER - len(send_length))
    conn.send(send_length)
    conn.send(message)


def reply(conn, msg):
    if msg == "version" or msg.startswith("version "):
        send(conn, f'version {{"nonce":{NONCE},"user_agent":"/lecture:0/","version":1}}')
        send(conn, "verack")
    elif msg == "ping" or msg.startswith("ping "):
        body = json.loads(msg[5:] or "{}")
        if "nonce" in body:
            send(conn, f'pong {{"nonce":{body["nonce"]}}}')
        else:
            send(conn, "pong")
    else:
        send(conn, f'ack {{"id":"{random.getrandbits(64):016x}"}}')


def handle_myPeer(conn, addr):
    print(f"[NEW CONNECTION] {addr} connected.")
    connected = True
    while connected:
        msg_length = conn.recv(HEADER).decode(FORMAT)
        if msg_length:
            msg_length = int(msg_length)
            msg = conn.recv(msg_length).decode(FORMAT)
            if msg == DISCONNECT_MESSAGE:
                connected = False
            print(f"[{addr}] {msg}")
            if connected:
                reply(conn, msg)
        else:
            # Not in the lecture: there, recv() returning b"" after the peer closes
            # makes this loop spin at 100 % CPU for ever, which would starve the test box.
            connected = False
    conn.close()


def start():
    node.listen()
    print(f"[LISTENING] Node is listening on {NODE}:{node.getsockname()[1]}", flush=True)
    while True:
        conn, addr = node.accept()
        thread = threading.Thread(target=handle_myPeer, args=(conn, addr), daemon=True)
        thread.start()
        print(f"[ACTIVE CONNECTIONS] {threading.active_count() - 1}")


node = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
node.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
node.bind(ADDR)
print("[STARTING] Node starting...")
try:
    start()
except KeyboardInterrupt:
    pass
