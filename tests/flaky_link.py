"""A TCP relay between clients and the broker whose connections the test can cut, as a Wi-Fi
drop or a NAT timeout would: the bytes in flight are lost, both ends see the connection close."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading

from tinyml_core.broker import LOOPBACK, free_port


class FlakyLink:
    def __init__(self, broker_host: str, broker_port: int) -> None:
        self.target = (broker_host, broker_port)
        self.host, self.port = LOOPBACK, free_port()
        self.cuts = 0
        self.holding = False  # bytes are read and dropped, as on a link that went dead
        self._listener = socket.create_server((self.host, self.port))
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._peers: dict[socket.socket, socket.socket] = {}
        self._lock = threading.Lock()
        self._running = True
        self._thread = threading.Thread(target=self._relay, name="flaky-link", daemon=True)
        self._thread.start()

    def cut(self) -> None:
        """Close every connection through the link at once, both sides (and stop holding)."""
        with self._lock:
            for sock in list(self._peers):
                self._drop(sock)
            self.cuts += 1
            self.holding = False

    def hold(self) -> None:
        """From now on, drop everything in both directions until :meth:`cut`."""
        with self._lock:
            self.holding = True

    def close(self) -> None:
        self._running = False
        self._thread.join(timeout=2)
        with self._lock:
            for sock in list(self._peers):
                self._drop(sock)
        self._selector.close()
        self._listener.close()

    def _relay(self) -> None:
        while self._running:
            for key, _ in self._selector.select(timeout=0.05):
                with self._lock:
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._listener:
                        self._accept()
                    elif sock in self._peers:
                        self._forward(sock)

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        try:
            upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            client.close()
            return
        for sock, peer in ((client, upstream), (upstream, client)):
            sock.setblocking(True)
            self._peers[sock] = peer
            self._selector.register(sock, selectors.EVENT_READ)

    def _forward(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
            if data:
                if not self.holding:
                    self._peers[sock].sendall(data)
                return
        except OSError:
            pass
        self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        peer = self._peers.pop(sock, None)
        for end in (sock, peer):
            if end is None:
                continue
            self._peers.pop(end, None)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(end)
            end.close()
