"""chatbot/rooms.py: Socket.IO's manager with each client's rooms indexed."""
import random

import pytest
import socketio as python_socketio

from chatbot import rooms


def managed(manager):
    """``manager`` on a server (as the app's is), its sids numbered in order."""
    server = python_socketio.Server(client_manager=manager)
    numbers = iter(range(10**9))
    server.eio.generate_id = lambda: f"sid{next(numbers)}"
    return manager


def state(manager):
    return ({ns: {room: dict(members) for room, members in by_room.items()} for ns, by_room in manager.rooms.items()},
            manager.callbacks, manager.pending_connect, manager.pending_disconnect)


def test_the_indexed_manager_keeps_the_same_rooms_as_python_socketios():
    """The same random connects, joins, leaves, closes and disconnects, on
    two namespaces, leave both managers in the same state, and each client's
    rooms read the same."""
    plain, indexed = managed(python_socketio.Manager()), managed(rooms.IndexedManager())
    rng = random.Random(7)
    connected, disconnects, joins = [], 0, 0  # connected: (namespace, sid)
    for step in range(3000):
        action = rng.random()
        if action < 0.3 or not connected:
            namespace = rng.choice(["/", "/admin"])
            sids = {manager.connect(f"eio{step}", namespace) for manager in (plain, indexed)}
            assert len(sids) == 1
            connected.append((namespace, sids.pop()))
            continue
        namespace, sid = rng.choice(connected)
        room = rng.choice(["lobby", "reviewers", "model"])
        for manager in (plain, indexed):
            if action < 0.5:
                manager.enter_room(sid, namespace, room)
            elif action < 0.65:
                manager.leave_room(sid, namespace, room)
            elif action < 0.7:
                manager.close_room(room, namespace)
            else:
                manager.pre_disconnect(sid, namespace)
                manager.disconnect(sid, namespace)
        joins += action < 0.5
        if action >= 0.7:
            connected.remove((namespace, sid))
            disconnects += 1
        assert sorted(plain.get_rooms(sid, namespace)) == sorted(indexed.get_rooms(sid, namespace))
        assert state(plain) == state(indexed)
    assert len(connected) > 30 and disconnects > 500 and joins > 300
    assert set(indexed.rooms_of) == set(connected)


class NoScan(dict):
    """A namespace's rooms that fail the test when scanned."""

    def copy(self):
        raise AssertionError("scanned every room")

    items = values = __iter__ = copy


@pytest.mark.parametrize("manager", [python_socketio.Manager, rooms.IndexedManager])
def test_a_disconnect_does_not_scan_every_clients_room(manager):
    """python-socketio's own manager tests every room of the namespace for
    each disconnect (this test shows it, as the expected failure), so that a
    wave of N disconnects costs N²/2: the indexed one looks up the client's."""
    manager = managed(manager())
    sids = [manager.connect(f"eio{i}", "/") for i in range(200)]
    manager.enter_room(sids[0], "/", "lobby")
    manager.rooms["/"] = NoScan(manager.rooms["/"])
    if type(manager) is python_socketio.Manager:
        with pytest.raises(AssertionError, match="scanned every room"):
            manager.disconnect(sids[0], "/")
        return
    for sid in sids:
        manager.pre_disconnect(sid, "/")
        manager.disconnect(sid, "/")
    assert manager.rooms == {} and manager.rooms_of == {}


def test_the_app_uses_the_indexed_manager(make_app):
    from chatbot.extensions import socketio

    make_app()
    assert type(socketio.server.manager) is rooms.IndexedManager
