"""The chatbot's Flask application factory.

Importing the package imports nothing heavy: gunicorn loads the worker class
(chatbot/worker.py) in its master process, before gevent patches the standard
library in the worker, and the trainer needs no Flask.
"""
from .config import PROJECT_ROOT

MIGRATIONS_DIR = str(PROJECT_ROOT / "migrations")


def create_app(test_config=None):
    """Create and configure the app (Flask's app-factory pattern).

    ``test_config`` is a mapping that overrides the environment, for tests.
    """
    from pathlib import Path

    from flask import Flask

    from .config import Config, gevent_patched, load_secret_key, normalise_database_url, parse_origins
    from .extensions import csrf, db, login_manager, migrate, socketio

    # Import the modules that register Socket.IO handlers before the first
    # socketio.init_app: Flask-SocketIO only replays handlers it saw then.
    from . import api, chat, cli, database, grouping, heavy, kakao, limits, meaning, review, rooms, security, widget

    app = Flask(__name__, instance_path=str(PROJECT_ROOT / "instance"))
    app.config.from_object(Config)
    # JSON answers (the REST API, the KakaoTalk skill) in readable Korean, not \uXXXX escapes.
    app.json.ensure_ascii = False
    if test_config:
        app.config.update(test_config)
    if isinstance(app.config["ALLOWED_ORIGINS"], str):
        app.config["ALLOWED_ORIGINS"] = parse_origins(app.config["ALLOWED_ORIGINS"])
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    if not app.config["SECRET_KEY"]:
        app.config["SECRET_KEY"] = load_secret_key(app.instance_path)
    if not app.config["SQLALCHEMY_DATABASE_URI"]:
        app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///" + str(Path(app.instance_path) / "chatbot.db")
    app.config["SQLALCHEMY_DATABASE_URI"] = normalise_database_url(app.config["SQLALCHEMY_DATABASE_URI"])
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        options = dict(app.config["SQLALCHEMY_ENGINE_OPTIONS"])
        options.pop("pool_pre_ping", None)  # a file is never dropped: no ping per checkout
        app.config["SQLALCHEMY_ENGINE_OPTIONS"] = options

    db.init_app(app)
    database.init_app(app)
    migrate.init_app(app, db, directory=MIGRATIONS_DIR, render_as_batch=True)
    csrf.init_app(app)
    login_manager.init_app(app)
    socketio_options = {}
    if app.config["SOCKETIO_MESSAGE_QUEUE"]:
        # Only when configured: Flask-SocketIO's test client cannot run on a queue.
        socketio_options["message_queue"] = app.config["SOCKETIO_MESSAGE_QUEUE"]
    else:  # socketio is module-global and keeps its options across init_app calls
        socketio.server_options.pop("message_queue", None)
    socketio.server_options.pop("client_manager", None)
    manager = rooms.client_manager(app.config["SOCKETIO_MESSAGE_QUEUE"])
    if manager is not None:
        socketio_options["client_manager"] = manager
    async_mode = app.config["SOCKETIO_ASYNC_MODE"] or ("gevent" if gevent_patched() else "threading")
    socketio.init_app(app, async_mode=async_mode,
                      max_http_buffer_size=16 * app.config["MAX_MESSAGE_CHARS"] + 1024,
                      cors_allowed_origins=security.origin_checker(app.config["ALLOWED_ORIGINS"]),
                      **socketio_options)

    meaning.init_app(app)
    chat.init_app(app)
    grouping.init_app(app)  # after chat: it works on the responder's background thread
    widget.init_app(app)
    heavy.init_app(app)
    review.init_app(app)
    cli.init_app(app)
    limits.init_app(app)  # its middleware wraps Socket.IO's and chat's
    api.init_app(app)  # after limits: it uses its limiter
    kakao.init_app(app)  # after limits: it sets its own limits on the limiter
    security.init_app(app)  # last: its middleware wraps all of them
    return app
