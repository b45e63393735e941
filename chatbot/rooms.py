"""Socket.IO's client manager, with the rooms of each client indexed.

python-socketio's manager (5.18) finds the rooms a disconnecting client
leaves by testing every room of its namespace, and every client has a room
of its own: one disconnect costs time in proportion to the clients
connected, and a wave of N disconnects N²/2.  In bench-attack's
idle_sockets_many, 2,778 idle WebSockets closing at once held the event loop
for over a second, and every chat waited.  Here each client's rooms are
kept beside them, so that a disconnect costs in proportion to the client's
own rooms (two: everyone's and its own).

``client_manager`` makes the manager Flask-SocketIO would make for the same
message queue (none, or Redis), with the index.
"""
import socketio


class RoomIndex:
    """A mixin for python-socketio's managers: ``rooms_of`` keeps the rooms
    each (namespace, client) is in, as the manager enters and leaves them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rooms_of = {}  # (namespace, sid) -> {room, ...}

    def basic_enter_room(self, sid, namespace, room, eio_sid=None):
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self.rooms_of.setdefault((namespace, sid), set()).add(room)

    def basic_leave_room(self, sid, namespace, room):
        super().basic_leave_room(sid, namespace, room)
        rooms = self.rooms_of.get((namespace, sid))
        if rooms is not None:
            rooms.discard(room)
            if not rooms:
                del self.rooms_of[(namespace, sid)]

    def get_rooms(self, sid, namespace):
        return [room for room in self.rooms_of.get((namespace, sid), ()) if room is not None]

    def basic_disconnect(self, sid, namespace, **kwargs):
        """The base class's, with the client's rooms read from the index
        instead of found by testing every room."""
        if namespace not in self.rooms:
            return
        for room in list(self.rooms_of.get((namespace, sid), ())):
            self.basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            if sid in pending.get(namespace, ()):
                pending[namespace].remove(sid)
                if not pending[namespace]:
                    del pending[namespace]


class IndexedManager(RoomIndex, socketio.Manager):
    """One process: Flask-SocketIO's default manager, indexed."""


class IndexedRedisManager(RoomIndex, socketio.RedisManager):
    """Several processes on a Redis message queue, indexed."""


def client_manager(message_queue: str | None):
    """The manager for ``message_queue`` (Config.SOCKETIO_MESSAGE_QUEUE), as
    Flask-SocketIO's init_app would make it (its channel, reading and
    writing), with the index; None for a queue other than Redis, which
    Flask-SocketIO then makes as it always does."""
    if not message_queue:
        return IndexedManager()
    if message_queue.startswith(("redis://", "rediss://")):
        return IndexedRedisManager(message_queue, channel="flask-socketio", write_only=False)
    return None
