/* Review pages under a Content-Security-Policy without 'unsafe-inline'.
 *
 * Flask-Admin's templates still have a few inline bits that such a policy
 * blocks; this file, served by the app, does their work instead:
 * - bulk actions: templates/admin/actions.html gives each menu item a
 *   data-action (instead of onclick="modelActions.execute(...)");
 * - onclick="return false;" on the "add filter" items, and href="javascript:void(0)"
 *   on menu toggles: both only mean "do not follow this link", so the
 *   attribute is dropped and the click's default prevented here.
 * modelActions comes from Flask-Admin's admin/js/actions.js (list page).
 */
(function () {
  "use strict";

  var stale = document.querySelectorAll('[onclick="return false;"]');
  for (var i = 0; i < stale.length; i++) stale[i].removeAttribute("onclick");

  document.addEventListener("click", function (event) {
    var target = event.target;
    if (!target || !target.closest) return;
    var link = target.closest('a[href^="javascript:"], [onclick], .dropdown-item.filter');
    if (link && link.tagName === "A") event.preventDefault();
    var item = target.closest("[data-action]");
    if (item && window.modelActions) {
      event.preventDefault();
      window.modelActions.execute(item.getAttribute("data-action"));
    }
  }, true);
})();
