"""Flask extensions, created here once and bound to the app in create_app."""
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_socketio import SocketIO
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import CSRFProtect

db = SQLAlchemy()
migrate = Migrate()
# Threading mode by default (Config.SOCKETIO_ASYNC_MODE): each event runs in
# its own thread, and PyTorch releases the GIL while it computes, so one slow
# reply never holds up other chats.
socketio = SocketIO()
login_manager = LoginManager()
csrf = CSRFProtect()
