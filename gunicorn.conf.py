"""gunicorn's settings for the chat server; gunicorn reads this file from the
working directory by itself (``make serve``, the README's systemd unit).

One worker process on gevent (chatbot/worker.py): every connection is a
greenlet, the model runs on a few OS threads.  Add processes on other ports
behind nginx rather than workers here (README "Deployment").

This runs in gunicorn's master process: it must not import the app (gevent
patches the standard library only in the worker, before the app is loaded).
"""
import os

from chatbot.config import Config

worker_class = "chatbot.worker.GuardedGeventWorker"
workers = 1
# The worker refuses connections over MAX_CONNECTIONS (by default what
# MEMORY_LIMIT_MB holds: chatbot/memory.py) itself (503); its pool is a
# little larger so that refusing never waits for a free slot.
worker_connections = Config.MAX_CONNECTIONS + 256
# Seconds to send a request's headers (the gevent worker applies it to every
# request on a connection), and that an idle keep-alive connection stays open.
keepalive = int(os.environ.get("HEADER_TIMEOUT") or 5)
# A worker whose event loop stops answering for this long is restarted.
timeout = 30
graceful_timeout = 10
# Smaller than gunicorn's defaults: the chat's requests are small.
limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190
control_socket_disable = True
