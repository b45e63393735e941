/* Review pages under a Content-Security-Policy without 'unsafe-inline'.
 *
 * Flask-Admin's templates had a few inline handlers, which such a policy
 * blocks; this file, served by the app, does their work instead:
 * - bulk actions: templates/admin/actions.html gives each menu item a
 *   data-action (instead of onclick="modelActions.execute(...)");
 * - the "add filter" items (templates/admin/model/layout.html, instead of
 *   onclick="return false;") and links to "javascript:void(0)" only mean
 *   "do not follow this link": their clicks' default is prevented here, so
 *   the browser never tries to run a javascript: URL.
 * modelActions comes from Flask-Admin's admin/js/actions.js (list page).
 */
(function () {
  "use strict";

  document.addEventListener("click", function (event) {
    var target = event.target;
    if (!target || !target.closest) return;
    if (target.closest('a[href^="javascript:"], a.dropdown-item.filter')) event.preventDefault();
    var item = target.closest("[data-action]");
    if (item && window.modelActions) {
      event.preventDefault();
      window.modelActions.execute(item.getAttribute("data-action"));
    }
  }, true);
})();

/* The models page (templates/admin/versions.html): a confirm() before deleting
 * a version, and the retrain panel kept live from the server's `retrain`
 * events on the /admin Socket.IO namespace (only logged-in reviewers may
 * join it).  Without Socket.IO the page still shows the state it was
 * rendered with; every value is put in as text, never as HTML. */
(function () {
  "use strict";

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form && form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  }, true);

  function setField(panel, name, text) {
    var el = panel.querySelector('[data-field="' + name + '"]');
    if (el) el.textContent = text;
  }

  function show(panel, s) {
    var running = !!s.running;
    setField(panel, "state_label", (s.state_label || "없음") + (running ? " (진행 중)" : ""));
    var progress = "";
    if (s.epoch) progress = "epoch " + s.epoch + (s.epochs ? " / " + s.epochs : "");
    setField(panel, "progress", progress);
    var loss = "";
    if (s.train_loss !== null && s.train_loss !== undefined) {
      loss = "train " + s.train_loss;
      if (s.dev_loss !== null && s.dev_loss !== undefined) loss += " · dev " + s.dev_loss;
    }
    setField(panel, "loss", loss);
    setField(panel, "eta", running && s.eta_seconds !== null && s.eta_seconds !== undefined
      ? "최대 " + Math.round(s.eta_seconds) + "초" : "");
    setField(panel, "message", s.message || "");
    var log = document.getElementById("retrain-log");
    if (log && typeof s.log_tail === "string") log.textContent = s.log_tail;
    var button = document.getElementById("retrain-start");
    if (button) button.disabled = running;
    // A run just ended: reload once so the versions table shows the new model.
    if (panel.getAttribute("data-was-running") === "1" && !running) window.location.reload();
    panel.setAttribute("data-was-running", running ? "1" : "0");
  }

  document.addEventListener("DOMContentLoaded", function () {
    var panel = document.getElementById("retrain-panel");
    if (!panel || typeof window.io !== "function") return;
    var socket = window.io("/admin", { transports: ["websocket", "polling"] });
    socket.on("retrain", function (status) { show(panel, status || {}); });
  });
})();

/* The review queue's group page (templates/admin/queue_group.html), for the
 * keyboard: Ctrl+Enter (or Cmd+Enter) marks the group 검토 완료 with the
 * correction typed; outside a text field, n skips to the next group and d
 * marks the group 삭제 필요.  A Hangul syllable still being composed is left
 * alone (isComposing). */
(function () {
  "use strict";

  document.addEventListener("keydown", function (event) {
    var form = document.getElementById("queue-group-form");
    if (!form || event.isComposing || event.altKey) return;
    var target = event.target;
    var typing = target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT" ||
                            target.isContentEditable);
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      document.getElementById("queue-reviewed").click();
    } else if (!typing && !event.ctrlKey && !event.metaKey) {
      if (event.key === "n") {
        event.preventDefault();
        window.location.href = document.getElementById("queue-skip").href;
      } else if (event.key === "d") {
        event.preventDefault();
        document.getElementById("queue-delete").click();
      }
    }
  });
})();

/* Two panels fetched as JSON after the page loads, from their data-url, and
 * built here, every value as text, never as HTML:
 * - Suggested answers (chatbot/suggest.py, templates/admin/suggestions.html)
 *   on an exchange's edit page and the queue's group page.  "이 답변 쓰기"
 *   puts one in the correction box the panel's data-target names; the
 *   reviewer can still change it, and nothing is saved until they save the
 *   form.
 * - What saving a correction would change (chatbot/reach.py,
 *   templates/admin/reach.html): the past unreviewed questions the
 *   correction would answer at once, the nearest first, so that a reviewer
 *   sees an answer reaching too far before saving it. */
(function () {
  "use strict";

  function element(tag, className, text) {
    var node = document.createElement(tag);
    node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function percent(similarity) {
    return Math.floor(similarity * 100) + "%";
  }

  /* Fetch the JSON of the panel `selector` names and give it to `show`;
   * the page works without it (an error or a busy server shows nothing). */
  function fetchPanel(selector, show) {
    var panel = document.querySelector(selector + "[data-url]");
    if (!panel || !window.fetch) return;
    fetch(panel.getAttribute("data-url"), {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (data) { if (data) show(panel, data); })
      .catch(function () { /* the reviewer goes on without it */ });
  }

  document.addEventListener("click", function (event) {
    var button = event.target && event.target.closest && event.target.closest("[data-suggestion]");
    if (!button) return;
    var panel = button.closest("[data-target]");
    var box = panel && document.getElementById(panel.getAttribute("data-target"));
    if (!box) return;
    box.value = button.getAttribute("data-suggestion");
    box.focus();
  });

  function suggestion(s) {
    var li = element("li", "list-group-item d-flex justify-content-between align-items-start suggestion");
    var text = element("div", "mr-3");
    text.appendChild(element("div", "review-text suggestion-answer", s.answer));
    text.appendChild(element("small", "text-muted", s.source_label + " · 질문: " + s.question));
    var side = element("div", "text-nowrap");
    side.appendChild(element("span", "badge badge-light mr-2", percent(s.similarity)));
    var button = element("button", "btn btn-sm btn-outline-primary", "이 답변 쓰기");
    button.type = "button";
    button.setAttribute("data-suggestion", s.answer);
    side.appendChild(button);
    li.appendChild(text);
    li.appendChild(side);
    return li;
  }

  function reached(r) {
    var li = element("li", "reach-question");
    li.appendChild(element("span", "review-text", r.question));
    li.appendChild(element("span", "text-muted", " (" + r.count + "건, " + percent(r.similarity) + ")"));
    return li;
  }

  document.addEventListener("DOMContentLoaded", function () {
    fetchPanel("#suggestions", function (panel, data) {
      var list = panel.querySelector("ul");
      (data.suggestions || []).forEach(function (s) { list.appendChild(suggestion(s)); });
      panel.hidden = !list.children.length;
    });
    fetchPanel("#reach", function (panel, data) {
      var summary = panel.querySelector("#reach-summary");
      if (!data.exchanges) {
        summary.textContent = "저장해도 검토하지 않은 다른 질문(최근 " + data.window.toLocaleString() +
          "건 중)의 답은 바로 바뀌지 않습니다.";
      } else {
        summary.textContent = "저장하면 검토하지 않은 다른 질문 " + data.exchanges.toLocaleString() +
          "건도 바로 이 답변을 받습니다. 가장 가까운 질문:";
        var list = panel.querySelector("ul");
        data.nearest.forEach(function (r) { list.appendChild(reached(r)); });
      }
      panel.hidden = false;
    });
  });
})();
