"""/admin/kakao (카카오톡): the skill URL to paste into Kakao i Open Builder,
with the steps to connect a KakaoTalk channel.  Reviewers only: the URL's
secret is all that keeps others from posing as Kakao."""
from flask import current_app, url_for
from flask_admin import BaseView, expose

from .admin_base import ReviewerOnly
from .kakao import skill_secret


class KakaoView(ReviewerOnly, BaseView):

    @expose("/")
    def index(self):
        config = current_app.config
        return self.render("admin/kakao.html",
                           skill_url=url_for("kakao.skill", secret=skill_secret(), _external=True),
                           budget=config["KAKAO_REPLY_BUDGET"], user_limit=config["KAKAO_USER_RATE_LIMIT"],
                           own_secret=bool(config.get("KAKAO_SKILL_SECRET")))
