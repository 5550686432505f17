// Live password strength: says, as the member types, how the password fares against the
// portal's rule (at least 12 characters; longer and more varied is stronger). The server
// checks the real rule, including the list of common passwords.
(function () {
  "use strict";
  var input = document.getElementById("password");
  var out = document.getElementById("password-strength");
  if (!input || !out) { return; }
  function score(p) {
    var kinds = 0;
    if (/[a-z]/.test(p)) { kinds++; }
    if (/[A-Z]/.test(p)) { kinds++; }
    if (/[0-9]/.test(p)) { kinds++; }
    if (/[^A-Za-z0-9]/.test(p)) { kinds++; }
    if (p.length < 12) { return "weak"; }
    if (p.length >= 16 || kinds >= 3) { return "strong"; }
    return "fair";
  }
  input.addEventListener("input", function () {
    if (!input.value) { out.textContent = ""; return; }
    out.textContent = out.getAttribute("data-" + score(input.value));
  });
}());
