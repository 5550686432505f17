//! The member pages in headless Chromium, walked as a member would: log in, see what is due,
//! pay by card (tokenized in the browser by the sandbox), see a decline's reason, pay by bank
//! account and see it processing then settled, switch to Spanish, log out. Every page is
//! checked with axe-core (no serious or critical WCAG 2.1 A/AA violation) and, with
//! `PORTAL_SCREENSHOTS=<dir>` (`cargo xtask screenshots`), saved as a PNG.
//!
//! Needs `chromedriver` (Debian's `chromium-driver`; `PORTAL_CHROMEDRIVER` overrides the path)
//! and axe-core (`PORTAL_AXE_JS`, the path of `axe.min.js`, by default where `.ci/run` puts it:
//! `~/.cache/portal-ci/node_modules/axe-core/`). `.ci/run` installs both; elsewhere the test
//! says it is skipped, and in CI a skip is a failure.

use crate::{DEMO_PASSWORD, DEMO_USER, Db, TestApp};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What the browser tests need from the machine, or why they are skipped.
fn tools() -> Option<(PathBuf, String)> {
    let driver = std::env::var("PORTAL_CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/usr/bin/chromedriver"));
    // `.ci/run` installs axe-core into ~/.cache/portal-ci and says so in PORTAL_AXE_JS.
    let axe = std::env::var("PORTAL_AXE_JS")
        .ok()
        .or_else(|| {
            std::env::var("HOME")
                .ok()
                .map(|h| format!("{h}/.cache/portal-ci/node_modules/axe-core/axe.min.js"))
        })
        .and_then(|p| std::fs::read_to_string(p).ok());
    let missing = match (driver.exists(), &axe) {
        (false, _) => Some(format!("no chromedriver at {}", driver.display())),
        (true, None) => {
            Some("no axe-core: set PORTAL_AXE_JS to axe.min.js (`npm install axe-core`)".to_owned())
        }
        (true, Some(_)) => None,
    };
    if let Some(why) = missing {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("the browser tests must run in CI, but {why}");
        }
        let _ = writeln!(std::io::stderr(), "SKIPPED browser tests: {why}");
        return None;
    }
    axe.map(|a| (driver, a))
}

struct Browser {
    client: Client,
    driver: Child,
    axe: String,
    shots: Option<PathBuf>,
    _profile: tempdir::Dir,
}

mod tempdir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Browser {
    async fn start(driver: &Path, axe: String) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile =
            std::env::temp_dir().join(format!("portal-chromium-{}-{port}", std::process::id()));
        let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": std::env::var("PORTAL_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--window-size=1280,1000",
                    "--force-device-scale-factor=1",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }))
        .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let client = loop {
            // chromedriver listens on plain HTTP on this machine: no TLS client needed.
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if started.elapsed() < Duration::from_secs(20) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("chromedriver did not answer: {e}"),
            }
        };
        let shots = std::env::var("PORTAL_SCREENSHOTS").ok().map(PathBuf::from);
        if let Some(dir) = &shots {
            std::fs::create_dir_all(dir).unwrap();
        }
        Browser {
            client,
            driver: child,
            axe,
            shots,
            _profile: tempdir::Dir(profile),
        }
    }

    async fn stop(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    async fn find(&self, css: &str) -> Element {
        match self
            .client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
        {
            Ok(e) => e,
            Err(e) => panic!(
                "no {css} on {}: {e}\n{}",
                self.url().await,
                self.body().await
            ),
        }
    }

    async fn link(&self, text: &str) -> Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::LinkText(text))
            .await
            .unwrap_or_else(|e| panic!("no link {text:?}: {e}"))
    }

    async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }

    async fn fill(&self, css: &str, value: &str) {
        let e = self.find(css).await;
        e.clear().await.unwrap();
        e.send_keys(value).await.unwrap();
    }

    async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap();
    }

    /// How many elements match `css`.
    async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .map_or(0, |all| all.len())
    }

    /// Clicks a form's submit button and waits for the page that answers it.
    async fn submit(&self, css: &str) {
        self.client
            .execute("document.body.dataset.answered = 'no';", vec![])
            .await
            .unwrap();
        self.click(css).await;
        self.find("body:not([data-answered])").await;
    }

    async fn url(&self) -> String {
        self.client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default()
    }

    async fn path(&self) -> String {
        self.client
            .current_url()
            .await
            .map(|u| u.path().to_owned())
            .unwrap_or_default()
    }

    /// Waits until the page's path is `want` (or, when `want` ends in `/`, starts with it).
    async fn wait_for_path(&self, want: &str) {
        let started = Instant::now();
        loop {
            let path = self.path().await;
            let there = if want.ends_with('/') && want.len() > 1 {
                path.starts_with(want)
            } else {
                path == want
            };
            if there {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "expected {want}, still on {path}: {}",
                self.body().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the text of `css` contains `needle` (a page loading, a script answering).
    async fn wait_for_text(&self, css: &str, needle: &str) {
        let started = Instant::now();
        loop {
            if let Ok(e) = self.client.find(Locator::Css(css)).await {
                if e.text().await.unwrap_or_default().contains(needle) {
                    return;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "{css} never said {needle:?}: {}",
                self.body().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the address contains `needle`.
    async fn wait_for_url(&self, needle: &str) {
        let started = Instant::now();
        while !self.url().await.contains(needle) {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "never reached {needle}: {}",
                self.url().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn body(&self) -> String {
        match self.client.find(Locator::Css("main")).await {
            Ok(m) => m.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Checks the page with axe-core and saves its screenshot as `name`.
    async fn check(&self, name: &str) {
        self.find("main").await;
        self.client.execute(&self.axe, vec![]).await.unwrap();
        let found = self
            .client
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, { runOnly: { type: 'tag',
                     values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } })
                   .then(r => done(r.violations
                       .filter(v => v.impact === 'serious' || v.impact === 'critical')
                       .map(v => v.id + ' (' + v.impact + '): ' + v.help + ' at '
                           + v.nodes.map(n => n.target.join(' ')).join(', '))))
                   .catch(e => done(['axe failed: ' + e]));",
                vec![],
            )
            .await
            .unwrap();
        let problems: Vec<String> = serde_json::from_value(found).unwrap();
        assert!(
            problems.is_empty(),
            "{name}: accessibility violations:\n{}",
            problems.join("\n")
        );
        if let Some(dir) = &self.shots {
            let png = self.client.screenshot().await.unwrap();
            std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
        }
    }
}

/// Chooses a new card and types its details (12/2034, CVC 123).
async fn fill_card(b: &Browser, number: &str) {
    b.click("#method-card").await;
    b.fill("#card-number", number).await;
    b.fill("#card-exp-month", "12").await;
    b.fill("#card-exp-year", "2034").await;
    b.fill("#card-cvc", "123").await;
}

/// Sets a date input (typing into one depends on the browser's locale).
async fn set_date(b: &Browser, id: &str, value: &str) {
    b.client
        .execute(
            "document.getElementById(arguments[0]).value = arguments[1];",
            vec![json!(id), json!(value)],
        )
        .await
        .unwrap();
}

/// Pays from the payment page with a new card; returns at the review page.
async fn pay_with_card(b: &Browser, amount: &str, number: &str, shot: Option<&str>) {
    b.fill("#amount", amount).await;
    fill_card(b, number).await;
    if let Some(name) = shot {
        b.check(name).await;
    }
    b.click("#pay-form button[type=submit]").await;
    b.wait_for_path("/pay/review").await;
}

/// Create Account as the member guide describes it: personal information, username and
/// password, the emailed code, then the dashboard (in the language the member chose).
async fn create_an_account(b: &Browser, app: &TestApp) {
    b.link("Create Account").await.click().await.unwrap();
    b.wait_for_path("/register").await;
    b.check("register-en").await;
    b.fill("#account_number", "HC1000002").await;
    b.fill("#first_name", "María").await;
    b.fill("#last_name", "López").await;
    set_date(b, "date_of_birth", "1980-05-17").await;
    b.fill("#ssn", "234-56-7890").await;
    b.fill("#email", "maria@example.com").await;
    b.fill("#username", "maria").await;
    b.fill("#password", "short").await;
    b.wait_for_text("#password-strength", "too short").await;
    b.fill("#password", "a long and happy passphrase").await;
    b.wait_for_text("#password-strength", "strong").await;
    b.find("#language")
        .await
        .select_by_value("es")
        .await
        .unwrap();
    b.click("form.stack button[type=submit]").await;
    let lead = b.text("p.lead").await;
    assert!(lead.contains("m***@example.com"), "{lead}");
    b.check("verify-en").await;
    // A wrong code is refused on its field.
    b.fill("#code", "000000").await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_text("#code-error", "not right").await;
    // The same step in Spanish: the language switch keeps her on it.
    b.link("Español").await.click().await.unwrap();
    b.wait_for_text("h1", "Confirme su correo").await;
    assert!(b.text("p.lead").await.contains("m***@example.com"));
    b.check("verify-es").await;
    let code = app
        .outbox()
        .await
        .into_iter()
        .find_map(|n| match n.body {
            portal_core::notice::NoticeBody::EmailVerification { code, .. } => Some(code),
            _ => None,
        })
        .expect("a verification code was emailed");
    b.fill("#code", &code).await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_path("/dashboard").await;
    assert!(b.text("h1").await.contains("María"));
    assert_eq!(
        b.text("#due-title").await,
        "Monto a pagar",
        "she chose Spanish"
    );
    b.check("dashboard-new-member-es").await;
    b.link("English").await.click().await.unwrap();
    b.wait_for_text("#due-title", "Amount due").await;
    b.check("dashboard-new-member-en").await;
    b.click("nav button.link").await;
    b.wait_for_path("/").await;
}

/// Guest pay from the home page (account number, name, date of birth, then a card), then the
/// payment's status by its reference number.
async fn pay_as_a_guest(b: &Browser, app: &TestApp) {
    use chrono::Datelike;
    let today = app.running.app.portal.deps().clock.today();
    let born = format!("{}-05-17", today.year() - 41);
    b.goto(&app.base).await;
    b.link("Pay without logging in")
        .await
        .click()
        .await
        .unwrap();
    b.wait_for_path("/guest").await;
    b.check("guest-en").await;
    b.fill("#account_number", "HC1000001").await;
    b.fill("#first_name", "Dana").await;
    b.fill("#last_name", "Someone Else").await;
    set_date(b, "date_of_birth", &born).await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_text("p.alert", "don't match our records").await;
    b.fill("#last_name", "Rivera").await;
    set_date(b, "date_of_birth", &born).await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_path("/guest").await;
    b.find("#pay-form").await;
    b.fill("#amount", "10.00").await;
    fill_card(b, "4242424242424242").await;
    b.check("guest-pay-en").await;
    b.click("#pay-form button[type=submit]").await;
    b.wait_for_path("/guest/pay").await;
    let reference = b.text("#reference").await;
    assert_eq!(b.text("#payment-status").await, "Paid");
    b.check("guest-confirmation-en").await;
    b.link("Check a payment's status")
        .await
        .click()
        .await
        .unwrap();
    b.wait_for_path("/status").await;
    assert_eq!(b.text("#payment-status").await, "Paid");
    assert!(b.body().await.contains(&reference));
    b.check("status-en").await;
    b.fill("#reference", "AAAA-AAAA-AAAA").await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_text("#reference-error", "").await;
    b.check("status-error-en").await;
}

/// A support agent finds the member by name and the payment by its reference number, sees the
/// account's timeline, and resends the receipt.
async fn a_support_agent_finds_the_payment(b: &Browser, app: &TestApp, reference: &str) {
    b.goto(&format!("{}/support/login", app.base)).await;
    b.check("support-login").await;
    let (agent, password) = portal_app::wiring::DEMO_AGENT;
    b.fill("#username", agent).await;
    b.fill("#password", password).await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_path("/support").await;
    b.fill("#q", "Rivera").await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_text("#results", "HC1000001").await;
    b.check("support-search").await;
    b.fill("#q", reference).await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_path("/support/accounts/").await;
    let row = b.text(&format!("#payment-{reference}")).await;
    assert!(row.contains("$100.00"), "{row}");
    assert!(b.text("#timeline").await.contains("payment."));
    b.check("support-account").await;
    b.click(&format!("#payment-{reference} form button")).await;
    b.wait_for_text("#support-notice", "Receipt queued").await;
    b.click("nav button.link").await;
    b.wait_for_path("/").await;
}

/// The member pages again in Spanish: what a Spanish-speaking member sees at each step.
async fn en_espanol(b: &Browser, app: &TestApp) {
    let base = &app.base;
    b.goto(&format!("{base}/language?to=es&back=/dashboard"))
        .await;
    b.wait_for_path("/dashboard").await;
    b.link("Hacer un pago").await.click().await.unwrap();
    b.wait_for_path("/pay").await;
    pay_with_card(b, "5.00", "4000000000000002", None).await;
    b.check("review-es").await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_path("/payments/").await;
    b.wait_for_text("#decline-reason", "rechazó").await;
    b.check("declined-es").await;
    b.link("Intentar de nuevo").await.click().await.unwrap();
    b.wait_for_path("/pay").await;
    pay_with_card(b, "5.00", "4242424242424242", None).await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_path("/payments/").await;
    assert_eq!(b.text("#payment-status").await, "Pagado");
    b.check("confirmation-es").await;
    let reference = b.text("#reference").await;
    b.link("Hacer un pago").await.click().await.unwrap();
    b.wait_for_path("/pay").await;
    b.fill("#amount", "4.00").await;
    b.click("#method-bank").await;
    b.fill("#bank-routing", "110000000").await;
    b.fill("#bank-account", "000123456789").await;
    b.click("#save").await;
    b.check("pay-bank-es").await;
    b.click("#pay-form button[type=submit]").await;
    b.wait_for_path("/pay/review").await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_path("/payments/").await;
    assert_eq!(b.text("#payment-status").await, "En proceso");
    b.wait_for_text("#bank-note", "Se espera que se complete")
        .await;
    b.check("confirmation-bank-es").await;
    b.click("nav button.link").await;
    b.wait_for_path("/").await;
    for (path, name) in [
        ("/register", "register-es"),
        ("/forgot-password", "forgot-es"),
        ("/guest", "guest-es"),
    ] {
        b.goto(&format!("{base}{path}")).await;
        b.wait_for_path(path).await;
        b.check(name).await;
    }
    b.goto(&format!("{base}/status?reference={reference}"))
        .await;
    assert_eq!(b.text("#payment-status").await, "Pagado");
    b.check("status-es").await;
    b.fill("#reference", "AAAA-AAAA-AAAA").await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_text("#reference-error", "").await;
    b.check("status-error-es").await;
    // A bad amount is explained in Spanish, on its field.
    b.goto(&format!("{base}/login")).await;
    b.fill("#username", DEMO_USER).await;
    b.fill("#password", "a brand new premium passphrase").await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_path("/dashboard").await;
    b.goto(&format!("{base}/pay")).await;
    b.fill("#amount", "12.345").await;
    fill_card(b, "4242424242424242").await;
    b.click("#pay-form button[type=submit]").await;
    b.wait_for_text("#amount-error", "decimales").await;
    b.check("pay-error-es").await;
    // Automatic payments in Spanish: cancel, then set up again from the saved bank account.
    b.goto(&format!("{base}/settings/autopay")).await;
    b.click("button[value=cancel]").await;
    b.wait_for_text("#autopay-notice", "actualizaron").await;
    b.click("#method-saved-1").await;
    b.click("#pay-form button[type=submit]").await;
    b.wait_for_path("/settings/autopay/review").await;
    let authorization = b.text("#authorization-text").await;
    assert!(
        authorization.starts_with("Autorizo a Health Connector a debitar"),
        "{authorization}"
    );
    b.check("autopay-review-es").await;
    b.click("#accept").await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_text("#autopay-notice", "activados").await;
    b.check("autopay-active-es").await;
    b.link("Cambiar").await.click().await.unwrap();
    b.wait_for_text("#setup-title", "Cambiar pagos automáticos")
        .await;
    b.check("autopay-change-es").await;
    // Profile in Spanish: remove a saved method, then choose English and reminders again.
    b.goto(&format!("{base}/profile")).await;
    b.wait_for_text("h1", "Perfil y recordatorios").await;
    b.check("profile-es").await;
    let saved = b
        .client
        .find_all(Locator::Css("ul.methods li"))
        .await
        .unwrap()
        .len();
    b.click("ul.methods form button").await;
    b.wait_for_text("#profile-notice", "Se eliminó").await;
    let left = b
        .client
        .find_all(Locator::Css("ul.methods li"))
        .await
        .unwrap()
        .len();
    assert_eq!(left, saved - 1);
    b.click("#language-en").await;
    b.click("#reminders-on").await;
    b.click("form[action='/profile/preferences'] button").await;
    b.wait_for_text("#profile-notice", "preferences were saved")
        .await;
    let checked = |css: &'static str| async move {
        b.find(css).await.prop("checked").await.unwrap() == Some("true".into())
    };
    assert!(checked("#language-en").await, "English is stored");
    assert!(checked("#reminders-on").await, "reminders are on again");
    b.goto(&format!("{base}/language?to=es&back=/dashboard"))
        .await;
    b.wait_for_text("#reminders-status", "Le enviamos un recordatorio")
        .await;
    b.click("nav button.link").await;
    b.wait_for_path("/").await;
    // Guest pay and a password reset, in Spanish.
    b.goto(&format!("{base}/guest")).await;
    b.fill("#account_number", "HC1000001").await;
    b.fill("#first_name", "Dana").await;
    b.fill("#last_name", "Rivera").await;
    let born = {
        use chrono::Datelike;
        format!(
            "{}-05-17",
            app.running.app.portal.deps().clock.today().year() - 41
        )
    };
    set_date(b, "date_of_birth", &born).await;
    b.click("form.stack button[type=submit]").await;
    b.find("#pay-form").await;
    b.fill("#amount", "3.00").await;
    fill_card(b, "4242424242424242").await;
    b.check("guest-pay-es").await;
    b.click("#pay-form button[type=submit]").await;
    b.wait_for_path("/guest/pay").await;
    assert_eq!(b.text("#payment-status").await, "Pagado");
    b.check("guest-confirmation-es").await;
    b.goto(&format!("{base}/forgot-password")).await;
    b.fill("#identifier", DEMO_USER).await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_text("#reset-sent", "le enviamos un enlace")
        .await;
    let token = app
        .outbox()
        .await
        .into_iter()
        .rev()
        .find_map(|n| match n.body {
            portal_core::notice::NoticeBody::PasswordReset { token, .. } => Some(token),
            _ => None,
        })
        .expect("a reset link was emailed");
    b.goto(&format!("{base}/reset-password?token={token}"))
        .await;
    b.check("reset-es").await;
}

/// Forgot Password: the emailed link (read from the outbox) sets a new password, which then
/// logs in.
async fn forget_the_password(b: &Browser, app: &TestApp) {
    b.goto(&format!("{}/login", app.base)).await;
    b.link("Forgot Password?").await.click().await.unwrap();
    b.wait_for_path("/forgot-password").await;
    b.check("forgot-en").await;
    b.fill("#identifier", DEMO_USER).await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_text("#reset-sent", "we sent a link").await;
    let token = app
        .outbox()
        .await
        .into_iter()
        .find_map(|n| match n.body {
            portal_core::notice::NoticeBody::PasswordReset { token, .. } => Some(token),
            _ => None,
        })
        .expect("a reset link was emailed");
    b.goto(&format!("{}/reset-password?token={token}", app.base))
        .await;
    b.check("reset-en").await;
    b.fill("#password", "password").await;
    b.click("form.stack button[type=submit]").await;
    assert!(
        !b.text("#password-error").await.is_empty(),
        "a weak password is refused"
    );
    // Switching language here keeps the emailed link's token: the form is still there.
    b.link("Español").await.click().await.unwrap();
    b.wait_for_text("h1", "Crear una contraseña nueva").await;
    b.find("#password").await;
    b.link("English").await.click().await.unwrap();
    b.wait_for_text("h1", "Set a new password").await;
    b.fill("#password", "a brand new premium passphrase").await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_text("main", "Your password was changed").await;
    b.goto(&format!("{}/login", app.base)).await;
    b.fill("#username", DEMO_USER).await;
    b.fill("#password", "a brand new premium passphrase").await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_path("/dashboard").await;
}

pub async fn a_member_pays_in_the_browser() {
    let Some((driver, axe)) = tools() else {
        return;
    };
    let app = TestApp::start(Db::Sqlite).await.unwrap();
    let b = Browser::start(&driver, axe).await;
    let base = app.base.clone();

    // Home: "Create Account" and "Log in".
    b.goto(&base).await;
    b.check("home-en").await;
    // The keyboard reaches the skip link first, and focus is visible.
    b.find("body")
        .await
        .send_keys(&fantoccini::key::Key::Tab.to_string())
        .await
        .unwrap();
    let focused = b.client.active_element().await.unwrap();
    assert_eq!(focused.text().await.unwrap(), "Skip to main content");
    let outline = b
        .client
        .execute(
            "return getComputedStyle(document.activeElement).outlineStyle;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(outline, json!("solid"), "focus is visible");
    create_an_account(&b, &app).await;
    b.link("Log in").await.click().await.unwrap();
    b.wait_for_path("/login").await;
    b.check("login-en").await;

    // Guessing a password locks the login for a while, and the page says for how long.
    let mut tries = 0;
    loop {
        b.fill("#username", "maria").await;
        b.fill("#password", "not her password").await;
        b.submit("form.stack button[type=submit]").await;
        if b.text("p.alert").await.contains("logging in is paused for") {
            break;
        }
        tries += 1;
        assert!(tries < 6, "no lockout after {tries} wrong passwords");
    }
    assert!(b.text("p.alert").await.ends_with(" minutes."));
    b.check("login-locked-en").await;
    b.link("Español").await.click().await.unwrap();
    b.wait_for_text("h1", "Iniciar sesión").await;
    b.fill("#username", "maria").await;
    b.fill("#password", "a long and happy passphrase").await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_text("p.alert", "en pausa durante").await;
    b.check("login-locked-es").await;
    b.link("English").await.click().await.unwrap();
    b.wait_for_text("h1", "Log in").await;

    // A wrong password says so, without saying which part was wrong.
    b.fill("#username", DEMO_USER).await;
    b.fill("#password", "not the password").await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_text("p.alert", "username or password is incorrect")
        .await;
    b.check("login-error-en").await;
    b.link("Español").await.click().await.unwrap();
    b.wait_for_text("h1", "Iniciar sesión").await;
    b.fill("#username", DEMO_USER).await;
    b.fill("#password", "not the password").await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_text("p.alert", "no son correctos").await;
    b.check("login-error-es").await;
    b.link("English").await.click().await.unwrap();
    b.wait_for_text("h1", "Log in").await;

    // Log in: the dashboard shows what is due and when.
    b.fill("#username", DEMO_USER).await;
    b.fill("#password", DEMO_PASSWORD).await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_path("/dashboard").await;
    let due = b.text("#amount-due").await;
    assert!(due.starts_with('$') && due != "$0.00", "{due}");
    assert!(!b.text("#due-date").await.is_empty());
    assert_eq!(b.text("#autopay-status").await, "Off");
    b.check("dashboard-en").await;

    // Make a Payment: the amount starts at the amount due; a declined card says why.
    b.link("Make a Payment").await.click().await.unwrap();
    b.wait_for_path("/pay").await;
    let prefilled = b.find("#amount").await.prop("value").await.unwrap();
    assert_eq!(
        format!("${}", prefilled.unwrap_or_default()),
        due,
        "the amount defaults to the amount due"
    );
    b.check("pay-en").await;
    b.fill("#amount", "12.345").await;
    fill_card(&b, "4242424242424242").await;
    b.click("#pay-form button[type=submit]").await;
    b.wait_for_text("#amount-error", "decimal").await;
    b.check("pay-error-en").await;
    pay_with_card(&b, "25.00", "4000000000009995", None).await;
    b.check("review-en").await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_path("/payments/").await;
    b.wait_for_text("#decline-reason", "not enough funds").await;
    b.check("declined-en").await;

    // Pay part by card: a reference number to save.
    b.link("Try again").await.click().await.unwrap();
    b.wait_for_path("/pay").await;
    pay_with_card(&b, "100.00", "4242 4242 4242 4242", None).await;
    assert_eq!(b.text("#review-method").await, "Visa •••• 4242");
    assert_eq!(b.text("#review-amount").await, "$100.00");
    b.click("form.stack button[type=submit]").await;
    b.wait_for_path("/payments/").await;
    let reference = b.text("#reference").await;
    assert_eq!(reference.len(), 14, "{reference}");
    assert_eq!(b.text("#payment-status").await, "Paid");
    b.check("confirmation-en").await;
    // The card number never reached the portal: only the sandbox's token did.
    let (_, payments) = app
        .get("/payments", &app.login(DEMO_USER, DEMO_PASSWORD).await)
        .await;
    assert!(!payments.to_string().contains("4242424242424242"));

    // The rest by bank account: processing first, settled once the bank has paid.
    b.link("Make a Payment").await.click().await.unwrap();
    b.wait_for_path("/pay").await;
    b.click("#method-bank").await;
    b.fill("#bank-routing", "110000000").await;
    b.fill("#bank-account", "000123456789").await;
    b.check("pay-bank-en").await;
    b.click("#pay-form button[type=submit]").await;
    b.wait_for_path("/pay/review").await;
    assert!(
        b.body()
            .await
            .contains("Bank payments take a few business days")
    );
    b.click("form.stack button[type=submit]").await;
    b.wait_for_path("/payments/").await;
    assert_eq!(b.text("#payment-status").await, "Processing");
    assert!(
        b.text("#bank-note")
            .await
            .contains("Expected to complete by")
    );
    b.check("confirmation-bank-en").await;
    let confirmation = b.url().await;
    b.link("Back to your dashboard")
        .await
        .click()
        .await
        .unwrap();
    b.wait_for_path("/dashboard").await;
    assert!(b.body().await.contains("A bank payment is processing"));
    assert_eq!(b.text("#amount-due").await, "$0.00");
    app.advance_gateway_days(3).await;
    let started = Instant::now();
    loop {
        b.goto(&confirmation).await;
        if b.text("#payment-status").await == "Paid" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the bank payment never settled"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Spanish, from any page.
    // Settings → Automatic Payments: a bank account entered here, the amount due monthly,
    // the authorization to accept, then pause and resume.
    // "Go to the Settings menu and select Automatic Payments."
    b.click("nav summary").await;
    b.check("settings-menu-en").await;
    b.link("Automatic Payments").await.click().await.unwrap();
    b.wait_for_path("/settings/autopay").await;
    assert!(b.body().await.contains("no automatic payments"));
    b.click("#method-bank").await;
    b.fill("#bank-routing", "110000000").await;
    b.fill("#bank-account", "000123456789").await;
    b.click("#rule-due").await;
    b.check("autopay-en").await;
    b.click("#pay-form button[type=submit]").await;
    b.wait_for_path("/settings/autopay/review").await;
    let authorization = b.text("#authorization-text").await;
    assert!(authorization.contains("6789"), "{authorization}");
    b.check("autopay-review-en").await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_text("#accept-error", "Check the box").await;
    b.click("#accept").await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_text("#autopay-notice", "Automatic payments are on")
        .await;
    assert_eq!(b.text(".mandate-status").await, "Active");
    b.check("autopay-active-en").await;
    b.click("button[value=pause]").await;
    b.wait_for_text(".mandate-status", "Paused").await;
    b.click("button[value=resume]").await;
    b.wait_for_text(".mandate-status", "Active").await;
    // Change: the form starts from the current settings; a new authorization is accepted.
    b.link("Change").await.click().await.unwrap();
    b.wait_for_url("change=").await;
    assert_eq!(
        b.find("#rule-due").await.prop("checked").await.unwrap(),
        Some("true".into())
    );
    b.click("#rule-fixed").await;
    b.fill("#fixed_amount", "150.00").await;
    b.check("autopay-change-en").await;
    b.click("#pay-form button[type=submit]").await;
    b.wait_for_path("/settings/autopay/review").await;
    assert!(b.text("#authorization-text").await.contains("150.00"));
    b.click("#accept").await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_text("#autopay-notice", "were updated").await;
    assert!(b.body().await.contains("A fixed amount ($150.00)"));
    assert_eq!(
        b.client
            .find_all(Locator::Css(".mandate"))
            .await
            .unwrap()
            .len(),
        1,
        "changed, not added"
    );
    b.link("Dashboard").await.click().await.unwrap();
    b.wait_for_path("/dashboard").await;
    assert_eq!(b.text("#autopay-status").await, "On");
    assert_eq!(
        b.text("#reminders-status").await,
        "We email you a reminder before each due date."
    );

    // Profile and reminders: the details on record, the language and the reminders.
    b.click("nav summary").await;
    b.find("nav")
        .await
        .find(Locator::LinkText("Profile and reminders"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_for_path("/profile").await;
    assert_eq!(b.text("#profile-email").await, "dana.rivera@example.com");
    assert!(b.body().await.contains("(Used by your automatic payments)"));
    b.check("profile-en").await;
    b.click("#reminders-on").await;
    b.click("form[action='/profile/preferences'] button").await;
    b.wait_for_text("#profile-notice", "preferences were saved")
        .await;
    b.link("Dashboard").await.click().await.unwrap();
    b.wait_for_path("/dashboard").await;
    assert_eq!(
        b.text("#reminders-status").await,
        "Due-date reminders are off."
    );

    // Payment History: every payment, filters, and a CSV download.
    b.link("Payment History").await.click().await.unwrap();
    b.wait_for_path("/payments").await;
    let rows = b.client.find_all(Locator::Css("tbody tr")).await.unwrap();
    assert_eq!(
        rows.len(),
        4,
        "three here and the first month's check: {}",
        b.body().await
    );
    assert!(b.body().await.contains("Check"));
    b.check("history-en").await;
    b.find("#status")
        .await
        .select_by_value("failed")
        .await
        .unwrap();
    b.click("form.filters button[type=submit]").await;
    b.wait_for_url("status=failed").await;
    let rows = b.client.find_all(Locator::Css("tbody tr")).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(b.body().await.contains("Declined"));
    let csv = b
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/payments.csv').then(r => r.text()).then(done, e => done('failed: ' + e));",
            vec![],
        )
        .await
        .unwrap();
    let csv = csv.as_str().unwrap_or_default().to_owned();
    assert!(
        csv.starts_with("date,reference,amount,method,status"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert!(csv.contains(&reference), "{csv}");

    b.goto(&format!("{base}/dashboard")).await;
    b.link("Español").await.click().await.unwrap();
    b.wait_for_path("/dashboard").await;
    assert_eq!(b.text("#due-title").await, "Monto a pagar");
    let html_lang = b
        .find("html")
        .await
        .attr("lang")
        .await
        .unwrap()
        .unwrap_or_default();
    assert_eq!(html_lang, "es");
    b.check("dashboard-es").await;
    b.link("Hacer un pago").await.click().await.unwrap();
    b.wait_for_path("/pay").await;
    b.check("pay-es").await;
    b.click("nav summary").await;
    b.check("settings-menu-es").await;
    b.link("Pagos automáticos").await.click().await.unwrap();
    b.wait_for_path("/settings/autopay").await;
    b.check("autopay-es").await;
    b.link("Historial de pagos").await.click().await.unwrap();
    b.wait_for_path("/payments").await;
    b.check("history-es").await;
    b.link("Ayuda").await.click().await.unwrap();
    b.wait_for_path("/help").await;
    assert!(b.body().await.contains("¿Qué pasa si no hago un pago?"));
    b.check("help-es").await;

    // Log out: back home, and the dashboard asks to log in again.
    b.click("nav button.link").await;
    b.wait_for_path("/").await;
    b.check("home-es").await;
    b.goto(&format!("{base}/dashboard")).await;
    b.wait_for_path("/login").await;
    b.check("login-es").await;
    b.link("English").await.click().await.unwrap();
    b.wait_for_path("/login").await;
    b.link("Help").await.click().await.unwrap();
    b.wait_for_path("/help").await;
    assert!(b.body().await.contains("What if I miss a payment?"));
    b.check("help-en").await;

    pay_as_a_guest(&b, &app).await;
    a_support_agent_finds_the_payment(&b, &app, &reference).await;
    forget_the_password(&b, &app).await;
    en_espanol(&b, &app).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_pages_in_a_real_browser() {
    a_member_pays_in_the_browser().await;
}

const LATE_USER: &str = "lee.late";
const LATE_PASSWORD: &str = "a late but honest household";

/// Opens a household on the portal's today with one health enrollment starting this month and
/// a portal login, bills it and pays the binder by card.
async fn open_household(
    app: &TestApp,
    number: &str,
    (first, last): (&str, &str),
    (username, password): (&str, &str),
    subsidy_cents: i64,
) -> portal_core::ids::AccountId {
    use portal_core::account::{Account, Holder, Member, NewAccount};
    use portal_core::calendar::CoverageMonth;
    use portal_core::enrollment::{CoverageKind, Enrollment};
    use portal_core::identity::{AccountNumber, Email, Language, PersonName, Username};
    use portal_core::ids::{AccountId, EnrollmentId};
    use portal_core::money::Money;
    use portal_core::password::Password;
    use portal_core::ports::Changes;
    use portal_core::services::{MakePayment, PayWith};

    let portal = &app.running.app.portal;
    let deps = portal.deps();
    let enrollment = Enrollment::new(
        EnrollmentId(deps.ids.new_id()),
        CoverageKind::Health,
        "ConnectorCare Plan 3A",
        Money::from_cents(50_000),
        Money::from_cents(subsidy_cents),
        CoverageMonth::of(deps.clock.today()),
    )
    .unwrap();
    let mut account = Account::open(
        AccountId(deps.ids.new_id()),
        NewAccount {
            number: AccountNumber::parse(number).unwrap(),
            holder: Holder {
                first_name: PersonName::parse(first).unwrap(),
                last_name: PersonName::parse(last).unwrap(),
                date_of_birth: chrono::NaiveDate::from_ymd_opt(1975, 3, 3).unwrap(),
                ssn_digest: deps.sealer.lookup_digest("345678901"),
                ssn_last4: "8901".into(),
            },
            contact_email: None,
            enrollments: vec![enrollment],
        },
        deps.clock.now(),
    );
    account.member = Some(Member {
        username: Username::parse(username).unwrap(),
        email: Email::parse(&format!("{username}@example.com")).unwrap(),
        email_verified_at: Some(deps.clock.now()),
        email_code: None,
        password_hash: deps
            .hasher
            .hash(&Password::new(password, &[username]).unwrap())
            .await
            .unwrap(),
        password_changed_at: deps.clock.now(),
        language: Language::En,
        ssn_sealed: deps.sealer.seal("345678901").unwrap(),
        ssn_digest: deps.sealer.lookup_digest("345678901"),
        created_at: deps.clock.now(),
    });
    let id = account.id;
    deps.store.commit(Changes::account(account)).await.unwrap();
    portal.bill_account(id).await.unwrap();
    let binder = portal.account(id).await.unwrap().ledger.bills[0].amount;
    portal
        .make_payment(MakePayment {
            account_id: id,
            amount: Some(binder),
            method: PayWith::Token {
                token: crate::common::card_token(&app.sandbox).await,
                save: false,
            },
            idempotency_key: format!("{number}-binder"),
        })
        .await
        .unwrap();
    id
}

/// Moves the portal's clock a day at a time, running that household's billing, reminders and
/// delinquency as the daily jobs would, until `done` holds; returns the day it stopped on.
async fn walk_days(
    app: &TestApp,
    id: portal_core::ids::AccountId,
    done: impl Fn(&portal_core::account::Account, chrono::NaiveDate) -> bool,
) -> chrono::NaiveDate {
    let portal = &app.running.app.portal;
    let mut day = portal.deps().clock.today();
    for _ in 0..400 {
        if done(&portal.account(id).await.unwrap(), day) {
            return day;
        }
        day = day.succ_opt().unwrap();
        app.clock.set_today(day);
        portal.bill_account(id).await.unwrap();
        portal.remind_account(id).await.unwrap();
        portal.delinquency_account(id).await.unwrap();
    }
    panic!("the household never reached the state the test needs");
}

/// A household whose coverage started two months ago: the binder is paid, the premiums since
/// are not, so it is past due and in its grace period. The clock walks from the start of
/// coverage to today.
async fn late_household(app: &TestApp) {
    use portal_core::calendar::CoverageMonth;
    let today = app.running.app.portal.deps().clock.today();
    app.clock
        .set_today(CoverageMonth::of(today).plus(-2).first_day());
    let id = open_household(
        app,
        "HC1000777",
        ("Lee", "Late"),
        (LATE_USER, LATE_PASSWORD),
        20_000,
    )
    .await;
    walk_days(app, id, |_, day| day >= today).await;
}

pub async fn a_late_member_sets_up_a_payment_plan() {
    let Some((driver, axe)) = tools() else {
        return;
    };
    let app = TestApp::start(Db::Sqlite).await.unwrap();
    late_household(&app).await;
    let b = Browser::start(&driver, axe).await;
    b.goto(&format!("{}/login", app.base)).await;
    b.fill("#username", LATE_USER).await;
    b.fill("#password", LATE_PASSWORD).await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_path("/dashboard").await;
    // Missed payment: a past-due banner with the grace period's end, pay now, or a plan.
    b.wait_for_text(".alert-past-due", "Grace period ends")
        .await;
    assert!(b.body().await.contains("Past due since"));
    b.check("dashboard-past-due-en").await;
    b.link("Español").await.click().await.unwrap();
    b.wait_for_text(".alert-past-due", "El período de gracia termina")
        .await;
    b.check("dashboard-past-due-es").await;
    b.link("Solicitar un plan de pagos")
        .await
        .click()
        .await
        .unwrap();
    b.wait_for_path("/plan").await;
    b.check("plan-es").await;
    b.link("English").await.click().await.unwrap();
    b.wait_for_text("h1", "Payment plan").await;
    let past_due = b.text("#past-due").await;
    assert!(
        past_due.starts_with('$') && past_due != "$0.00",
        "{past_due}"
    );
    b.check("plan-en").await;
    b.find("#installments-count")
        .await
        .select_by_value("3")
        .await
        .unwrap();
    b.click("form.stack button[type=submit]").await;
    b.wait_for_text("#plan-notice", "Your payment plan is set up")
        .await;
    let rows = b
        .client
        .find_all(Locator::Css("#installments tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 3, "three monthly installments");
    b.check("plan-created-en").await;
    b.link("Español").await.click().await.unwrap();
    b.wait_for_path("/plan").await;
    b.wait_for_text("h1", "Plan de pagos").await;
    b.check("plan-created-es").await;

    // Payment History pages: twenty payments to a page, newest first.
    let portal = &app.running.app.portal;
    let id = portal
        .find_accounts("HC1000777")
        .await
        .unwrap()
        .into_iter()
        .next()
        .unwrap();
    for n in 0..21 {
        portal
            .make_payment(portal_core::services::MakePayment {
                account_id: id,
                amount: Some(portal_core::money::Money::from_cents(100 + n)),
                method: portal_core::services::PayWith::Token {
                    token: crate::common::card_token(&app.sandbox).await,
                    save: false,
                },
                idempotency_key: format!("history-page-{n}"),
            })
            .await
            .unwrap();
    }
    b.link("English").await.click().await.unwrap();
    b.wait_for_text("h1", "Payment plan").await;
    b.link("Payment History").await.click().await.unwrap();
    b.wait_for_path("/payments").await;
    assert_eq!(b.count("tbody tr").await, 20);
    assert!(b.text("caption").await.contains("Page 1/2"));
    // The newest payment ($1.20) is on the first page; the binder on the second.
    assert!(b.body().await.contains("$1.20"));
    b.click("#older").await;
    b.wait_for_url("page=2").await;
    assert_eq!(
        b.count("tbody tr").await,
        2,
        "the 21st small payment and the binder"
    );
    assert!(b.text("caption").await.contains("Page 2/2"));
    assert!(b.body().await.contains("$1.00"));
    b.link("Newer payments").await.click().await.unwrap();
    b.wait_for_url("page=1").await;
    assert_eq!(b.count("tbody tr").await, 20);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_payments_in_a_real_browser() {
    a_late_member_sets_up_a_payment_plan().await;
}

const ENDED_USER: &str = "robin.ended";
const ENDED_PASSWORD: &str = "coverage lapsed but not forgotten";

pub async fn a_terminated_member_pays_to_restore_coverage() {
    use portal_core::delinquency::CoverageStatus;
    let Some((driver, axe)) = tools() else {
        return;
    };
    let app = TestApp::start(Db::Sqlite).await.unwrap();
    let portal = app.running.app.portal.clone();
    // No subsidy: a one-month grace period, then the coverage ends for non-payment.
    let id = open_household(
        &app,
        "HC1000888",
        ("Robin", "Ended"),
        (ENDED_USER, ENDED_PASSWORD),
        0,
    )
    .await;
    let terminated = |a: &portal_core::account::Account, day| {
        a.summary(&portal.config().delinquency, day)
            .enrollments
            .iter()
            .any(|e| matches!(e.status, CoverageStatus::Terminated { .. }))
    };
    walk_days(&app, id, terminated).await;

    let b = Browser::start(&driver, axe).await;
    b.goto(&format!("{}/login", app.base)).await;
    b.fill("#username", ENDED_USER).await;
    b.fill("#password", ENDED_PASSWORD).await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_path("/dashboard").await;
    // The alert says what restoring the coverage takes and until when.
    b.wait_for_text(".alert-terminated", "To restore it, pay $")
        .await;
    let alert = b.text(".alert-terminated").await;
    b.check("dashboard-terminated-en").await;
    b.link("Español").await.click().await.unwrap();
    b.wait_for_text(".alert-terminated", "Para restablecerla, pague")
        .await;
    b.check("dashboard-terminated-es").await;
    b.link("English").await.click().await.unwrap();
    b.wait_for_text(".alert-terminated", "To restore it").await;
    let amount = alert
        .split_once("pay $")
        .and_then(|(_, rest)| rest.split_once(" by "))
        .map(|(amount, _)| amount.replace(',', ""))
        .unwrap_or_else(|| panic!("no amount in {alert:?}"));
    // "Pay now" starts the payment from that amount.
    b.find(".alert-terminated a").await.click().await.unwrap();
    b.wait_for_path("/pay").await;
    assert_eq!(
        b.find("#amount").await.prop("value").await.unwrap(),
        Some(amount.clone())
    );
    pay_with_card(&b, &amount, "4242424242424242", None).await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_path("/payments/").await;
    assert_eq!(b.text("#payment-status").await, "Paid");
    // The payment itself restores it: no wait for a daily run.
    b.goto(&format!("{}/dashboard", app.base)).await;
    b.wait_for_path("/dashboard").await;
    assert_eq!(b.count(".alert-terminated").await, 0, "{}", b.body().await);
    assert!(!b.body().await.contains("Ended for non-payment"));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_member_in_a_real_browser() {
    a_terminated_member_pays_to_restore_coverage().await;
}

/// From a fresh demo, a support agent moves the test clock from one coverage notice to the
/// next (the first move with the support page's button, the rest through
/// `POST /api/v1/test-clock`) until both enrollments of the demo household have ended for
/// non-payment. At every stop the member's dashboard, the notice sent that day and the agent's
/// account page say the same amounts and dates as the core's answer.
pub async fn the_test_clock_walks_the_demo_household_to_termination() {
    use portal_core::account::EnrollmentSummary;
    use portal_core::delinquency::CoverageStatus;
    use portal_core::identity::Language;
    use portal_core::locale;
    use portal_core::notice::NoticeBody;
    use reqwest::StatusCode;
    let Some((driver, axe)) = tools() else {
        return;
    };
    let app = TestApp::start(Db::Sqlite).await.unwrap();
    let portal = app.running.app.portal.clone();
    let id = *portal
        .find_accounts("HC1000001")
        .await
        .unwrap()
        .first()
        .unwrap();
    let policy = portal.config().delinquency.clone();
    let start = portal.deps().clock.today();
    let (agent, agent_password) = portal_app::wiring::DEMO_AGENT;
    let (status, session) = app
        .post(
            "/support/sessions",
            None,
            json!({ "username": agent, "password": agent_password }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{session}");
    let agent_token = session["token"].as_str().unwrap().to_owned();
    let (status, clock) = app.get("/test-clock", &agent_token).await;
    assert_eq!(status, StatusCode::OK, "{clock}");
    assert_eq!(clock["today"], start.to_string());

    let b = Browser::start(&driver, axe).await;
    b.goto(&format!("{}/support/login", app.base)).await;
    b.fill("#username", agent).await;
    b.fill("#password", agent_password).await;
    b.click("form.stack button[type=submit]").await;
    b.wait_for_path("/support").await;
    b.wait_for_text("#clock-today", &locale::date(Language::En, start))
        .await;

    let outbox = app.running.app.db.outbox();
    let mut seen = std::collections::BTreeSet::new();
    let mut today = start;
    let mut member_signed_in = false;
    let mut checked = (0, 0, 0);
    for stop in 0..16 {
        let summary = portal.account(id).await.unwrap().summary(&policy, today);
        if summary
            .enrollments
            .iter()
            .all(|e| matches!(e.status, CoverageStatus::Terminated { .. }))
        {
            break;
        }
        let next = summary
            .enrollments
            .iter()
            .filter_map(|e| e.next_notice)
            .map(|n| n.on)
            .filter(|on| *on > today)
            .min()
            .unwrap_or_else(|| panic!("nothing ahead on {today}: {summary:?}"));
        let days = (next - today).num_days();
        if stop == 0 {
            b.fill("#days", &days.to_string()).await;
            b.click("#move-clock").await;
            let moved = if days == 1 {
                "forward 1 day ".to_owned()
            } else {
                format!("forward {days} days")
            };
            b.wait_for_text("#clock-moved", &moved).await;
            b.check("support-test-clock").await;
            b.click("nav button.link").await;
            b.wait_for_path("/").await;
        } else {
            let (status, moved) = app
                .post("/test-clock", Some(&agent_token), json!({ "days": days }))
                .await;
            assert_eq!(status, StatusCode::OK, "{moved}");
            assert_eq!(moved["jobs"]["failed"], 0, "{moved}");
        }
        today = next;
        assert_eq!(portal.deps().clock.today(), today);
        assert!(
            (today - start).num_days() <= 125,
            "still not terminated on {today}"
        );
        // The one answer, and the notices the days passed sent.
        let account = portal.account(id).await.unwrap();
        let answer = account.summary(&policy, today);
        let sent: Vec<NoticeBody> = outbox
            .pending_messages(100_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|m| m.notice.account_id == id && seen.insert(m.id))
            .map(|m| m.notice.body)
            .collect();
        if !member_signed_in {
            b.goto(&format!("{}/login", app.base)).await;
            b.fill("#username", DEMO_USER).await;
            b.fill("#password", DEMO_PASSWORD).await;
            b.click("form.stack button[type=submit]").await;
            b.wait_for_path("/dashboard").await;
            member_signed_in = true;
        }
        b.goto(&format!("{}/dashboard", app.base)).await;
        b.wait_for_path("/dashboard").await;
        let dashboard = b.body().await;
        let agent_page = app
            .http
            .get(format!("{}/support/accounts/{id}", app.base))
            .header("cookie", format!("portal_session={agent_token}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let says = |e: &EnrollmentSummary| -> (String, String) {
            let d = e
                .to_keep_coverage
                .unwrap_or_else(|| panic!("{today}: nothing keeps or restores {e:?}"));
            (locale::money(d.amount), locale::date(Language::En, d.by))
        };
        for e in &answer.enrollments {
            match e.status {
                CoverageStatus::InGrace { grace } => {
                    let (amount, by) = says(e);
                    checked.0 += 1;
                    let alert = format!("{} — {amount}. Grace period ends {by}.", e.plan_name);
                    assert!(
                        dashboard.contains(&alert),
                        "{today}: {alert:?} not in {dashboard}"
                    );
                    let line = format!(
                        "{}: in {:?} grace until {} (pay ${} by {}",
                        e.plan_name,
                        grace.kind,
                        grace.grace_ends_on,
                        e.past_due,
                        grace.grace_ends_on
                    );
                    assert!(
                        agent_page.contains(&line),
                        "{today}: {line:?} not on the agent page"
                    );
                    for n in &sent {
                        match n {
                            NoticeBody::PastDue {
                                plan_name,
                                amount,
                                grace_ends_on,
                                ..
                            }
                            | NoticeBody::TerminationWarning {
                                plan_name,
                                amount,
                                grace_ends_on,
                                ..
                            } if *plan_name == e.plan_name => {
                                assert_eq!(
                                    (*amount, *grace_ends_on),
                                    (e.past_due, grace.grace_ends_on),
                                    "{today}: the email and the dashboard disagree"
                                );
                            }
                            _ => {}
                        }
                    }
                }
                CoverageStatus::Terminated {
                    effective,
                    reinstatable_until,
                } if today > reinstatable_until => {
                    checked.2 += 1;
                    assert!(e.to_keep_coverage.is_none(), "{e:?}");
                    assert!(dashboard.contains("the time to restore it by paying has passed"));
                    let line = format!(
                        "{}: terminated {effective}; reinstatement closed {reinstatable_until}",
                        e.plan_name
                    );
                    assert!(
                        agent_page.contains(&line),
                        "{today}: {line:?} not on the agent page"
                    );
                }
                CoverageStatus::Terminated {
                    effective,
                    reinstatable_until,
                } => {
                    checked.1 += 1;
                    let (amount, by) = says(e);
                    assert!(dashboard.contains(&format!(
                        "Ended for non-payment on {}",
                        locale::date(Language::En, effective)
                    )));
                    assert!(
                        dashboard.contains(&format!("To restore it, pay {amount} by {by}.")),
                        "{today}: {dashboard}"
                    );
                    let line = format!(
                        "{}: terminated {effective}; pay ${} by {reinstatable_until}",
                        e.plan_name,
                        e.to_keep_coverage.map(|d| d.amount).unwrap_or_default()
                    );
                    assert!(
                        agent_page.contains(&line),
                        "{today}: {line:?} not on the agent page"
                    );
                    for n in &sent {
                        if let NoticeBody::CoverageTerminated {
                            plan_name,
                            effective: eff,
                            reinstatable_until: until,
                            amount_to_reinstate,
                            ..
                        } = n
                        {
                            if *plan_name == e.plan_name {
                                assert_eq!(
                                    (*eff, *until, Some(*amount_to_reinstate)),
                                    (
                                        effective,
                                        reinstatable_until,
                                        e.to_keep_coverage.map(|d| d.amount)
                                    ),
                                    "{today}: the termination email and the dashboard disagree"
                                );
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    eprintln!(
        "walked {} days from {start} to {today}: {} in-grace, {} terminated and {} closed checks",
        (today - start).num_days(),
        checked.0,
        checked.1,
        checked.2
    );
    assert!(
        checked.0 >= 4 && checked.1 >= 2,
        "every state was checked: {checked:?}"
    );
    let end = portal.account(id).await.unwrap().summary(&policy, today);
    assert!(
        end.enrollments
            .iter()
            .all(|e| matches!(e.status, CoverageStatus::Terminated { .. })),
        "{end:?}"
    );
    b.check("dashboard-test-clock-terminated-en").await;
    b.link("Español").await.click().await.unwrap();
    b.wait_for_text("main", "Terminó por falta de pago el")
        .await;
    b.check("dashboard-test-clock-terminated-es").await;
    // At phone width the page still fits: nothing scrolls sideways, in either language.
    b.client.set_window_size(390, 844).await.unwrap();
    for (lang, link) in [("es", "English"), ("en", "Español")] {
        let overflow = b
            .client
            .execute(
                "return document.documentElement.scrollWidth - window.innerWidth;",
                vec![],
            )
            .await
            .unwrap();
        b.check(&format!("dashboard-phone-{lang}")).await;
        let widest = b
            .client
            .execute(
                "return [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > window.innerWidth).slice(0, 5).map(e => e.tagName + '.' + e.className + '#' + e.id + ' ' + Math.round(e.getBoundingClientRect().right)).join(', ') + ' inner ' + window.innerWidth;",
                vec![],
            )
            .await
            .unwrap();
        assert!(
            overflow.as_i64().is_some_and(|o| o <= 0),
            "the {lang} dashboard scrolls sideways by {overflow} px at 390 px: {widest}"
        );
        b.link(link).await.click().await.unwrap();
        b.wait_for_path("/dashboard").await;
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_clock_in_a_real_browser() {
    the_test_clock_walks_the_demo_household_to_termination().await;
}
