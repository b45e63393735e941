"""Entry point: ``flask --app app ...`` and ``gunicorn app:app`` use this."""
from chatbot import create_app
from chatbot.extensions import socketio

app = create_app()

if __name__ == "__main__":
    socketio.run(app, host="127.0.0.1", port=5000)
