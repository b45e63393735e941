"""Flask extensions, created here once and bound to the app in create_app."""
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_socketio import SocketIO
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import CSRFProtect

db = SQLAlchemy()
migrate = Migrate()
# gevent in the server, threading elsewhere (Config.SOCKETIO_ASYNC_MODE); the
# model runs on OS threads either way (chatbot/batching.py).
socketio = SocketIO()
login_manager = LoginManager()
csrf = CSRFProtect()
