# SPDX-License-Identifier: GPL-2.0-or-later
"""A small QMP client for the benchmark: commands, and events timestamped.

One reader thread parses every message from QEMU as it arrives. Every
event keeps QEMU's own timestamp (wall clock, microseconds) and the host
time at which the reader got it; commands wait for the answer with their
id. Times are `time.time()` seconds (CLOCK_REALTIME, as QEMU's event
timestamps), so that both can be put on one axis.
"""

import json
import socket
import threading
import time


class QmpError(Exception):
    pass


class Event:
    __slots__ = ("name", "data", "qemu_t", "host_t")

    def __init__(self, name, data, qemu_t, host_t):
        self.name = name
        self.data = data
        self.qemu_t = qemu_t
        self.host_t = host_t

    def as_json(self):
        return {"event": self.name, "data": self.data, "qemu_t": self.qemu_t, "host_t": self.host_t}


class Qmp:
    def __init__(self, path, timeout=30.0):
        deadline = time.time() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.time() > deadline:
                    raise QmpError(f"no QMP socket at {path} after {timeout:.0f} s") from None
                time.sleep(0.05)
        self.cond = threading.Condition()
        self.events = []
        self.answers = {}
        self.greeting = None
        self.closed = False
        self.next_id = 0
        self.thread = threading.Thread(target=self._reader, name="qmp-reader", daemon=True)
        self.thread.start()
        with self.cond:
            if not self.cond.wait_for(lambda: self.greeting is not None or self.closed, timeout):
                raise QmpError("no QMP greeting")
        self.execute("qmp_capabilities")

    def _reader(self):
        buf = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                now = time.time()
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        self._dispatch(json.loads(line), now)
        except OSError:
            pass
        finally:
            with self.cond:
                self.closed = True
                self.cond.notify_all()

    def _dispatch(self, msg, now):
        with self.cond:
            if "QMP" in msg:
                self.greeting = msg
            elif "event" in msg:
                ts = msg.get("timestamp", {})
                qemu_t = ts.get("seconds", 0) + ts.get("microseconds", 0) / 1e6
                self.events.append(Event(msg["event"], msg.get("data", {}), qemu_t, now))
            elif "id" in msg:
                self.answers[msg["id"]] = (msg, now)
            self.cond.notify_all()

    def send(self, command, arguments=None):
        """Sends a command; returns (id, host time of the send)."""
        with self.cond:
            self.next_id += 1
            cid = self.next_id
        msg = {"execute": command, "id": cid}
        if arguments:
            msg["arguments"] = arguments
        t = time.time()
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        return cid, t

    def answer(self, cid, timeout=60.0):
        """Waits for the answer to `cid`: (return value, host time)."""
        with self.cond:
            self.cond.wait_for(lambda: cid in self.answers or self.closed, timeout)
            if cid not in self.answers:
                raise QmpError("QMP connection closed" if self.closed else f"no answer in {timeout} s")
            msg, t = self.answers.pop(cid)
        if "error" in msg:
            raise QmpError(f"{msg['error'].get('class')}: {msg['error'].get('desc')}")
        return msg.get("return"), t

    def execute(self, command, arguments=None, timeout=60.0):
        cid, _ = self.send(command, arguments)
        return self.answer(cid, timeout)[0]

    def timed(self, command, arguments=None, timeout=60.0):
        """Runs a command: (return value, host time sent, host time answered)."""
        cid, sent = self.send(command, arguments)
        ret, got = self.answer(cid, timeout)
        return ret, sent, got

    def mark(self):
        """An index into the event list: wait_event(since=mark) sees later events only."""
        with self.cond:
            return len(self.events)

    def wait_event(self, pred, since=0, timeout=60.0):
        """The first event from index `since` on for which pred(event) holds, or None."""
        deadline = time.time() + timeout
        with self.cond:
            i = since
            while True:
                while i < len(self.events):
                    if pred(self.events[i]):
                        return self.events[i]
                    i += 1
                left = deadline - time.time()
                if left <= 0 or self.closed:
                    return None
                self.cond.wait(left)

    def events_since(self, since=0):
        with self.cond:
            return list(self.events[since:])

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
