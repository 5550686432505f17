// Make a Payment and automatic payments: new card and bank details go straight from the
// browser to the payment processor's tokenization endpoint; only the token it returns is sent
// to the portal. The detail inputs have no name attribute, so the form can never submit them.
(function () {
  "use strict";
  var form = document.getElementById("pay-form");
  if (!form) { return; }
  var gateway = form.getAttribute("data-gateway");
  var key = form.getAttribute("data-key");
  var tokenInput = document.getElementById("token");
  var errorBox = document.getElementById("gateway-error");
  var panels = form.querySelectorAll(".details");

  function chosen() {
    var c = form.querySelector("input[name=method]:checked");
    return c ? c.value : "";
  }
  function showPanels() {
    var m = chosen();
    for (var i = 0; i < panels.length; i++) {
      panels[i].hidden = panels[i].getAttribute("data-for") !== m;
    }
  }
  function fail(message, fieldId) {
    errorBox.textContent = message;
    errorBox.hidden = false;
    var field = fieldId && document.getElementById(fieldId);
    if (field) {
      field.setAttribute("aria-invalid", "true");
      field.setAttribute("aria-describedby", "gateway-error");
      field.focus();
    } else {
      errorBox.focus();
    }
  }
  function value(id) { return document.getElementById(id).value.replace(/\s+/g, ""); }

  form.addEventListener("change", showPanels);
  showPanels();

  form.addEventListener("submit", function (event) {
    var m = chosen();
    if (m !== "card" && m !== "bank") { return; }
    if (tokenInput.value) { return; }
    event.preventDefault();
    errorBox.hidden = true;
    var body = new URLSearchParams();
    var field = null;
    if (m === "card") {
      body.set("type", "card");
      body.set("card[number]", value("card-number"));
      body.set("card[exp_month]", value("card-exp-month"));
      body.set("card[exp_year]", value("card-exp-year"));
      body.set("card[cvc]", value("card-cvc"));
      field = "card-number";
    } else {
      body.set("type", "us_bank_account");
      body.set("us_bank_account[routing_number]", value("bank-routing"));
      body.set("us_bank_account[account_number]", value("bank-account"));
      body.set("us_bank_account[account_type]", document.getElementById("bank-type").value);
      field = "bank-routing";
    }
    var submit = form.querySelector("button[type=submit]");
    submit.disabled = true;
    fetch(gateway + "/v1/payment_methods", {
      method: "POST",
      headers: { "Authorization": "Bearer " + key, "Content-Type": "application/x-www-form-urlencoded" },
      body: body.toString()
    }).then(function (r) {
      return r.json().then(function (j) { return { ok: r.ok, body: j }; });
    }).then(function (res) {
      submit.disabled = false;
      if (!res.ok || !res.body.id) {
        var e = res.body && res.body.error;
        var code = e && e.code ? e.code : "";
        var target = field;
        if (code.indexOf("expiry") >= 0) { target = "card-exp-month"; }
        if (code.indexOf("cvc") >= 0) { target = "card-cvc"; }
        if (code.indexOf("account_number") >= 0) { target = "bank-account"; }
        fail((e && e.message) || "The payment details were not accepted.", target);
        return;
      }
      tokenInput.value = res.body.id;
      var inputs = form.querySelectorAll(".details input");
      for (var i = 0; i < inputs.length; i++) { inputs[i].value = ""; }
      form.submit();
    }).catch(function () {
      submit.disabled = false;
      fail("We could not reach the payment processor. Please try again.", null);
    });
  });
}());
