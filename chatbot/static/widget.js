/* 한마디 chat widget, for any web site:
 *
 *   <script src="https://BOT/widget.js" defer></script>
 *
 * Adds a chat button at the bottom right of the page.  It opens a panel
 * holding an <iframe> of https://BOT/embed (BOT: this script's own origin),
 * so the chat is isolated from the page's CSS and scripts and talks to the
 * bot same-origin.  The bot lets only the sites in its ALLOWED_ORIGINS frame
 * /embed (CSP frame-ancestors); elsewhere the browser shows no chat.
 *
 * Nothing global is defined and no stylesheet is added: every style is set
 * through element.style (CSSOM), which a host page's CSP allows.  The frame
 * is made on the first click, so a page whose visitor never opens the chat
 * costs the bot nothing.  On narrow screens the open panel fills the viewport.
 */
(function () {
  "use strict";

  var script = document.currentScript;
  if (!script || !script.src) return; // not loaded by a <script src> element
  var BOT = new URL(script.src).origin;
  var NARROW = window.matchMedia("(max-width: 480px)");
  var BLUE = "#2f6fed"; // chat.css's --user-bg
  var SVG = "http://www.w3.org/2000/svg";

  function icon(path) {
    var svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("width", "24");
    svg.setAttribute("height", "24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    var p = document.createElementNS(SVG, "path");
    p.setAttribute("d", path);
    p.setAttribute("fill", "currentColor");
    svg.appendChild(p);
    return svg;
  }

  var CHAT_ICON = "M4 3h16a2 2 0 0 1 2 2v11a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2z";
  var CLOSE_ICON = "M6.4 5 12 10.6 17.6 5 19 6.4 13.4 12 19 17.6 17.6 19 12 13.4 6.4 19 5 17.6 10.6 12 5 6.4z";

  // The visitor's chat token, issued and signed by the bot, kept in this
  // site's own localStorage: first-party storage, which browsers that block
  // or partition a frame's storage keep, so the conversation survives a
  // reload on every browser, per site and visitor.  The frame sends it here
  // (postMessage) when the bot issues it, and gets it back in the URL's
  // fragment, never sent to a server.  Where this site's storage is denied
  // too, the frame keeps the token as long as it can.
  var KEY = "hanmadi.widget.session";
  var TOKEN = /^[A-Za-z0-9_-]{16,64}\.[A-Za-z0-9_-]{20,100}$/; // chat.js's

  function savedToken() {
    try {
      var token = window.localStorage.getItem(KEY);
      return TOKEN.test(token || "") ? token : null;
    } catch (e) {
      return null;
    }
  }

  function saveToken(token) {
    try {
      window.localStorage.setItem(KEY, token);
    } catch (e) {
      // this site's storage is denied
    }
  }

  function style(el, props) {
    for (var name in props) el.style[name] = props[name];
  }

  // Buttons reset what a host page's button rules may have changed.
  var BUTTON = {
    boxSizing: "border-box", display: "flex", alignItems: "center", justifyContent: "center",
    margin: "0", padding: "0", border: "0", cursor: "pointer", lineHeight: "1", font: "inherit",
  };

  function start() {
    if (document.querySelector("[data-hanmadi-widget]")) return; // the snippet was pasted twice

    var root = document.createElement("div");
    root.setAttribute("data-hanmadi-widget", "");

    var launcher = document.createElement("button");
    launcher.type = "button";
    launcher.setAttribute("aria-label", "채팅 열기");
    launcher.setAttribute("aria-expanded", "false");
    launcher.setAttribute("aria-controls", "hanmadi-widget-panel");
    launcher.appendChild(icon(CHAT_ICON));
    style(launcher, BUTTON);
    style(launcher, {
      position: "fixed", right: "20px", bottom: "20px", zIndex: "2147483000",
      width: "56px", height: "56px", borderRadius: "50%", background: BLUE, color: "#fff",
      boxShadow: "0 4px 14px rgba(0, 0, 0, 0.25)",
    });

    var panel = document.createElement("div");
    panel.id = "hanmadi-widget-panel";
    panel.setAttribute("role", "dialog");
    panel.setAttribute("aria-label", "한마디 채팅");
    style(panel, {
      display: "none", position: "fixed", zIndex: "2147483001", boxSizing: "border-box",
      overflow: "hidden", background: "#fff", boxShadow: "0 8px 30px rgba(0, 0, 0, 0.25)",
    });

    // Over the frame's top-right corner, where /embed's top bar leaves room (chat.css).
    var close = document.createElement("button");
    close.type = "button";
    close.setAttribute("aria-label", "채팅 닫기");
    close.appendChild(icon(CLOSE_ICON));
    style(close, BUTTON);
    style(close, {
      position: "absolute", top: "6px", right: "6px", width: "36px", height: "36px",
      borderRadius: "50%", background: "transparent", color: "#6b7280",
    });

    var frame = null;

    // A new token from the frame (only from it: its window, the bot's origin).
    window.addEventListener("message", function (event) {
      if (!frame || event.source !== frame.contentWindow || event.origin !== BOT) return;
      var data = event.data;
      if (data && data.hanmadi === "session" && typeof data.token === "string" && TOKEN.test(data.token)) {
        saveToken(data.token);
      }
    });

    function layout() {
      if (NARROW.matches) {
        style(panel, { top: "0", left: "0", right: "0", bottom: "0", width: "100%", height: "100%", maxHeight: "none",
                       borderRadius: "0" });
      } else {
        style(panel, { top: "auto", left: "auto", right: "20px", bottom: "88px", width: "380px",
                       height: "600px", maxHeight: "calc(100vh - 108px)", borderRadius: "16px" });
      }
      // Full screen, the button would cover the chat's send button: the panel's own close button closes it.
      launcher.style.display = NARROW.matches && isOpen() ? "none" : "flex";
    }

    function isOpen() {
      return panel.style.display !== "none";
    }

    function open() {
      if (!frame) {
        frame = document.createElement("iframe");
        var token = savedToken();
        frame.src = BOT + "/embed#origin=" + encodeURIComponent(window.location.origin) +
          (token ? "&session=" + token : "");
        frame.title = "한마디 채팅";
        style(frame, { display: "block", width: "100%", height: "100%", border: "0", margin: "0" });
        panel.insertBefore(frame, close); // the close button stays on top
      }
      panel.style.display = "block";
      launcher.setAttribute("aria-expanded", "true");
      launcher.setAttribute("aria-label", "채팅 닫기");
      layout();
      frame.focus();
    }

    function hide() {
      panel.style.display = "none"; // the frame stays, connected: reopening shows the same chat
      launcher.setAttribute("aria-expanded", "false");
      launcher.setAttribute("aria-label", "채팅 열기");
      layout();
      launcher.focus();
    }

    launcher.addEventListener("click", function () {
      if (isOpen()) hide();
      else open();
    });
    close.addEventListener("click", hide);
    root.addEventListener("keydown", function (event) {
      if (event.key === "Escape" && isOpen()) hide();
    });
    if (NARROW.addEventListener) NARROW.addEventListener("change", layout);
    else NARROW.addListener(layout);

    panel.appendChild(close);
    root.appendChild(panel);
    root.appendChild(launcher);
    document.body.appendChild(root);
    layout();
  }

  if (document.body) start();
  else document.addEventListener("DOMContentLoaded", start);
})();
