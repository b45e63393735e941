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
