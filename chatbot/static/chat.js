/* 한마디 chat client.
 *
 * Talks Socket.IO (v5 protocol, socket.io-client 4.x in vendor/) to the
 * Flask-SocketIO server (protocol in chatbot/chat.py):
 *   emit  "message"  {text}        on "reply"    {id, question, answer, route, model_version, feedback}
 *   emit  "history"                on "history"  {exchanges: [reply, ...]}  (this tab's chat, after a reload)
 *   emit  "feedback" {id, value}   on "feedback" {id, value}   value: "up" | "down" | null
 *   on    "error"    {code, message, event}
 *   on    "session"  {token}       on every connect: the chat session's signed token, sent back as
 *                                  auth {session} on the next connect to continue this chat
 *
 * The same script runs the chat page (/) and the widget's page (/embed,
 * in an iframe on other sites), which says so on its <body>:
 *   data-channel="widget"  connect with auth {channel: "widget"}
 *   data-storage="local"   keep the chat session token in localStorage (the
 *                          visitor's chat on that site survives closing the
 *                          tab) instead of sessionStorage (this tab only)
 *
 * Everything from the user or the server goes into the page with
 * textContent, never innerHTML.  No inline scripts or styles are needed,
 * so the page runs under "script-src 'self'; style-src 'self'".
 */
(function () {
  "use strict";

  var REPLY_TIMEOUT_MS = 90000; // give up waiting (and unlock the box) after this
  var COUNTER_FROM = 0.8; // show the counter from 80% of the limit
  var STICK_PX = 48; // "at the bottom" if within this many pixels of it

  var list = document.getElementById("messages");
  var form = document.getElementById("composer");
  var input = document.getElementById("input");
  var button = document.getElementById("send");
  var counter = document.getElementById("counter");
  var status = document.getElementById("status");

  var maxChars = parseInt(form.getAttribute("data-max-chars"), 10) || 0;
  var channel = document.body.getAttribute("data-channel"); // "widget" on /embed
  var storageName = document.body.getAttribute("data-storage") === "local" ? "localStorage" : "sessionStorage";

  var connected = false;
  var composing = false; // an IME composition (Korean, Japanese, ...) is open
  var pending = null; // {text, bubble, timer}: the message awaiting its reply
  var typing = null; // the "…" bubble
  var stick = true; // keep the list scrolled to the newest message
  var historyAsked = false; // the history is asked for once per page load

  /* ---- message list ---------------------------------------------------- */

  function scrollToEnd() {
    list.scrollTop = list.scrollHeight;
  }

  function append(node) {
    // The typing indicator always stays last.
    if (typing && typing.parentNode === list && node !== typing) {
      list.insertBefore(node, typing);
    } else {
      list.appendChild(node);
    }
    if (stick) scrollToEnd();
    return node;
  }

  function makeBubble(who, text) {
    var row = document.createElement("div");
    row.className = "msg " + who;
    var p = document.createElement("p");
    p.className = "bubble";
    var label = document.createElement("span");
    label.className = "sr-only";
    label.textContent = who === "user" ? "나: " : "한마디: ";
    p.appendChild(label);
    p.appendChild(document.createTextNode(text));
    row.appendChild(p);
    return row;
  }

  function bubble(who, text) {
    return append(makeBubble(who, text));
  }

  /* ---- 👍 / 👎 ---------------------------------------------------------- */

  var FEEDBACK = [
    { value: "up", icon: "👍", label: "좋은 답변" },
    { value: "down", icon: "👎", label: "아쉬운 답변" },
  ];

  // A bot reply: its bubble and, when it has an id, the two feedback buttons.
  function makeReply(data) {
    var answer = data && data.answer != null ? String(data.answer) : "";
    var row = makeBubble("bot", answer);
    if (data && data.route) row.setAttribute("data-route", String(data.route));
    if (!data || data.id == null) return row;
    row.setAttribute("data-id", String(data.id));
    var group = document.createElement("div");
    group.className = "feedback";
    group.setAttribute("role", "group");
    group.setAttribute("aria-label", "답변 평가");
    FEEDBACK.forEach(function (f) {
      var b = document.createElement("button");
      b.type = "button";
      b.className = "fb fb-" + f.value;
      b.setAttribute("data-value", f.value);
      b.setAttribute("aria-label", f.label);
      b.setAttribute("title", f.label);
      b.setAttribute("aria-pressed", "false");
      b.textContent = f.icon;
      group.appendChild(b);
    });
    row.appendChild(group);
    showFeedback(row, data.feedback);
    return row;
  }

  function showFeedback(row, value) {
    var buttons = row.querySelectorAll(".fb");
    for (var i = 0; i < buttons.length; i++) {
      buttons[i].setAttribute("aria-pressed", buttons[i].getAttribute("data-value") === value ? "true" : "false");
      buttons[i].disabled = false;
    }
    row.setAttribute("data-feedback", value || "");
  }

  function replyRow(id) {
    var rows = list.querySelectorAll(".msg.bot[data-id]");
    for (var i = 0; i < rows.length; i++) {
      if (rows[i].getAttribute("data-id") === String(id)) return rows[i];
    }
    return null;
  }

  list.addEventListener("click", function (event) {
    var b = event.target.closest ? event.target.closest(".fb") : null;
    if (!b || b.disabled || !connected) return;
    var row = b.closest(".msg");
    var id = parseInt(row.getAttribute("data-id"), 10);
    if (!id) return;
    // Pressing the pressed button again takes the opinion back.
    var value = b.getAttribute("aria-pressed") === "true" ? null : b.getAttribute("data-value");
    var buttons = row.querySelectorAll(".fb");
    for (var i = 0; i < buttons.length; i++) buttons[i].disabled = true;
    socket.emit("feedback", { id: id, value: value });
  });

  function notice(text) {
    var p = document.createElement("p");
    p.className = "notice";
    p.textContent = text;
    return append(p);
  }

  function showTyping() {
    if (typing) return;
    typing = document.createElement("div");
    typing.className = "msg bot typing";
    var p = document.createElement("p");
    p.className = "bubble";
    var label = document.createElement("span");
    label.className = "sr-only";
    label.textContent = "답변을 쓰는 중";
    p.appendChild(label);
    for (var i = 0; i < 3; i++) {
      var dot = document.createElement("span");
      dot.className = "dot";
      dot.setAttribute("aria-hidden", "true");
      p.appendChild(dot);
    }
    typing.appendChild(p);
    append(typing);
  }

  function hideTyping() {
    if (typing && typing.parentNode) typing.parentNode.removeChild(typing);
    typing = null;
  }

  list.addEventListener("scroll", function () {
    stick = list.scrollHeight - list.scrollTop - list.clientHeight < STICK_PX;
  });

  // The list shrinks when the on-screen keyboard opens or the textarea grows;
  // stay on the newest message if we were there.
  if (window.ResizeObserver) {
    new ResizeObserver(function () {
      if (stick) scrollToEnd();
    }).observe(list);
  }

  /* ---- input box ------------------------------------------------------- */

  function canSend() {
    return connected && !pending && input.value.trim() !== "";
  }

  function refresh() {
    button.disabled = !canSend();

    var n = input.value.length;
    if (maxChars && n >= Math.floor(maxChars * COUNTER_FROM)) {
      counter.textContent = n + " / " + maxChars;
      counter.classList.toggle("full", n >= maxChars);
      counter.hidden = false;
    } else {
      counter.hidden = true;
    }

    // Grow with the text up to the CSS max-height (CSSOM is allowed by CSP).
    input.style.height = "auto";
    input.style.height = input.scrollHeight + 2 + "px";
  }

  function send() {
    if (!canSend()) return;
    var text = input.value.trim();
    if (maxChars && text.length > maxChars) return; // maxlength normally stops this

    stick = true;
    var sent = bubble("user", text);
    pending = {
      text: input.value,
      bubble: sent,
      timer: window.setTimeout(function () {
        finish();
        notice("답변이 늦어지고 있어요. 잠시 후 다시 시도해 주세요.");
      }, REPLY_TIMEOUT_MS),
    };
    input.value = "";
    showTyping();
    refresh();
    socket.emit("message", { text: text });
  }

  // Ends the wait for a reply; returns what was being waited for.
  function finish() {
    var done = pending;
    if (done) window.clearTimeout(done.timer);
    pending = null;
    hideTyping();
    refresh();
    return done;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    send();
    input.focus();
  });

  input.addEventListener("compositionstart", function () {
    composing = true;
  });
  input.addEventListener("compositionend", function () {
    composing = false;
  });

  input.addEventListener("keydown", function (event) {
    if (event.key !== "Enter" || event.shiftKey) return; // Shift+Enter: newline
    // Enter that confirms a Hangul syllable must not send half a word.
    // keyCode 229 covers Safari, which reports isComposing=false here.
    if (event.isComposing || composing || event.keyCode === 229) return;
    event.preventDefault();
    send();
  });

  input.addEventListener("input", refresh);

  /* ---- connection ------------------------------------------------------ */

  var STATES = {
    connected: "연결됨",
    connecting: "연결 중…",
    disconnected: "연결 끊김",
  };

  function setState(state) {
    connected = state === "connected";
    if (status.getAttribute("data-state") !== state) {
      status.setAttribute("data-state", state);
      status.textContent = STATES[state];
    }
    refresh();
  }

  if (typeof window.io !== "function") {
    setState("disconnected");
    notice("채팅 스크립트를 불러오지 못했어요. 페이지를 새로 고쳐 주세요.");
    return;
  }

  // The chat session's token: issued and signed by the server (the "session"
  // event), kept across reloads per browser tab (the widget: per visitor of
  // a site) and sent back when connecting, so the server continues this
  // conversation; a token it did not issue gets a new, empty one.  Where
  // storage is denied the token lasts as long as the page: reconnects keep
  // the chat and its 👍/👎, a reload starts a new one.
  var TOKEN = /^[A-Za-z0-9_-]{16,64}\.[A-Za-z0-9_-]{20,100}$/;
  var storageKey = channel === "widget" ? "hanmadi.widget.session" : "hanmadi.session";
  // In the widget's frame, widget.js passes the token it keeps in the host
  // site's own storage, which survives where the frame's cannot, and the host
  // page's origin, to send a new token back to: #origin=...&session=...
  // Only a frame listens: only the bot and the sites in ALLOWED_ORIGINS may
  // frame /embed (CSP frame-ancestors).  A page opened on its own ignores its
  // fragment, so a link cannot hand a visitor a chat that someone else holds
  // the token of (session fixation).
  var host = channel === "widget" && window.parent !== window ? new URLSearchParams(window.location.hash.slice(1))
    : new URLSearchParams("");
  var hostOrigin = /^https?:\/\/[^\/?#\s]+$/.test(host.get("origin") || "") ? host.get("origin") : null;

  function savedToken() {
    var given = host.get("session");
    if (given && TOKEN.test(given)) return given;
    try {
      var kept = window[storageName].getItem(storageKey);
      return kept && TOKEN.test(kept) ? kept : null;
    } catch (e) {
      return null;
    }
  }

  var token = savedToken();

  function keepToken(issued) {
    if (typeof issued !== "string" || !TOKEN.test(issued)) return;
    token = issued;
    try {
      window[storageName].setItem(storageKey, issued);
    } catch (e) {
      // storage denied: the token lasts as long as the page
    }
    if (hostOrigin) window.parent.postMessage({ hanmadi: "session", token: issued }, hostOrigin);
  }

  // WebSocket first; fall back to long-polling if a proxy blocks WebSocket.
  // auth is asked for on every (re)connect: it sends the latest token.
  var socket = window.io({
    transports: ["websocket", "polling"],
    tryAllTransports: true,
    auth: function (send) {
      var auth = {};
      if (token) auth.session = token;
      if (channel) auth.channel = channel;
      send(auth);
    }
  });

  socket.on("session", function (data) {
    keepToken(data && data.token);
  });

  socket.on("connect", function () {
    setState("connected");
    if (!historyAsked) {
      historyAsked = true;
      socket.emit("history");
    }
  });

  // This tab's earlier exchanges (after a reload), put before anything the
  // page shows already; rows already shown are skipped.
  socket.on("history", function (data) {
    var exchanges = data && Array.isArray(data.exchanges) ? data.exchanges : [];
    var first = list.firstChild;
    exchanges.forEach(function (x) {
      if (!x || x.id == null || replyRow(x.id)) return;
      list.insertBefore(makeBubble("user", x.question != null ? String(x.question) : ""), first);
      list.insertBefore(makeReply(x), first);
    });
    stick = true;
    scrollToEnd();
  });

  socket.on("feedback", function (data) {
    var row = data ? replyRow(data.id) : null;
    if (row) showFeedback(row, data.value || null);
  });

  socket.on("disconnect", function (reason) {
    setState("disconnected");
    if (finish()) notice("연결이 끊겨 답변을 받지 못했어요. 다시 보내 주세요.");
    // The server closed us on purpose: the client will not retry by itself.
    if (reason === "io server disconnect") notice("서버가 연결을 끊었어요. 페이지를 새로 고쳐 주세요.");
  });

  // Socket.IO retries on its own (1 s, 2 s, ... up to 5 s apart): show
  // "연결 중…" during each attempt and "연결 끊김" while waiting for the next.
  socket.on("connect_error", function () {
    setState("disconnected");
  });

  socket.io.on("reconnect_attempt", function () {
    setState("connecting");
  });

  socket.on("reply", function (data) {
    finish();
    append(makeReply(data));
  });

  // A newly trained model took over while this page was open (make retrain,
  // or a reviewer activated another version): say so between the messages.
  socket.on("model", function (data) {
    if (data && data.version) notice("새로 학습한 모델(" + String(data.version) + ")로 답하기 시작했어요.");
  });

  socket.on("error", function (data) {
    var event = data && data.event;
    var message = data && data.message ? String(data.message) : "메시지를 처리하지 못했어요.";
    if (event === "feedback") {
      // Unlock the buttons again; the opinion shown stays what the server has.
      var rows = list.querySelectorAll(".msg.bot[data-id]");
      for (var i = 0; i < rows.length; i++) showFeedback(rows[i], rows[i].getAttribute("data-feedback") || null);
    }
    var refused = event === "message" ? finish() : null;
    if (refused) {
      // Take the refused message back: drop its bubble and, unless the user
      // has started typing something else, put the text back in the box.
      if (refused.bubble.parentNode) refused.bubble.parentNode.removeChild(refused.bubble);
      if (input.value === "") {
        input.value = refused.text;
        refresh();
      }
    }
    var n = notice(message);
    if (data && data.code) n.setAttribute("data-code", String(data.code));
  });

  setState("connecting");
  refresh();
})();
