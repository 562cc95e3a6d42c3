//! The web console in a real browser: Debian's Chromium, headless, driven through chromedriver
//! (WebDriver) against a real host running the test orchestrator and participant. A wrong
//! token is refused; an operator logs in, filters the list, opens a paused saga, cancels it
//! and sees it errored with its step compensated; a saga context holding a `<script>` is shown
//! as text; a component is deployed by upload and removed; a dead letter is redriven. Without
//! an admin token the console is off. Screenshots of the list and the saga page go to
//! target/console-screenshots/.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Host, TempDir};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const TOKEN: &str = "s3cret";

/// chromedriver on a free loopback port, killed (by its pid) when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let child = Command::new("chromedriver")
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver did not start ({e}): install Chromium and its driver with \
                     `apt-get install -y chromium chromium-driver` (`make test-tools` does)"
                )
            });
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"]}),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&self.url)
                .await
            {
                Ok(client) => return client,
                Err(e) if Instant::now() > deadline => {
                    panic!(
                        "cannot open Chromium through chromedriver at {}: {e}",
                        self.url
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn screenshots() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")))
        .join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("create the screenshot directory");
    dir
}

/// Waits until the text of `css` on the page satisfies `shows` (a click or a submit returns
/// before the next page has loaded).
async fn wait_for_text(browser: &Client, css: &str, shows: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = match browser.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if shows(&text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the page's {css} did not show what was awaited; it shows {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn text_of(browser: &Client, css: &str) -> String {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
        .text()
        .await
        .expect("an element's text")
}

/// Waits until the browser shows a page whose URL (path and query) satisfies `arrived`: a
/// click or a submit returns before the next page has loaded.
async fn wait_for(browser: &Client, what: &str, arrived: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let url = browser.current_url().await.expect("the current URL");
        let at = format!("{}?{}", url.path(), url.query().unwrap_or_default());
        let ready = browser
            .execute("return document.readyState === 'complete'", vec![])
            .await
            .expect("the page's state");
        if arrived(&at) && ready == json!(true) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the browser did not reach {what}; it is at {at}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_paused(host: &Host, key: &str) -> String {
    let started = host
        .http()
        .post_json(
            "/start/THREE",
            &json!({"key": key, "behaviors": {"s2": "system"}}),
        )
        .await
        .json();
    assert_eq!(started["status"], "paused", "{started}");
    started["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn an_operator_logs_in_finds_a_paused_saga_and_cancels_it_in_chromium() {
    let dir = TempDir::new("console");
    let host = Host::start_with(
        &dir,
        &["test_orchestrator", "test_participant"],
        &["--admin-token", TOKEN, "--retry-delay-ms", "300000"],
    );
    let finished = host
        .http()
        .post_json("/run/THREE", &json!({"key": "done"}))
        .await
        .json();
    assert_eq!(finished["status"], "finished");
    let hostile = start_paused(&host, "<script>window.pwned=1</script>").await;
    let paused = start_paused(&host, "stuck-order").await;
    let base = format!("http://{}", host.addr);

    let driver = Driver::start();
    let browser = driver.browser().await;
    log_in(&browser, &base).await;
    filter_the_paused(&browser).await;
    cancel_from_its_page(&browser, &paused).await;
    let saga: Value = host
        .http()
        .admin("GET", &format!("/sagas/{paused}"), Some(TOKEN))
        .await
        .json();
    assert_eq!(saga["status"], "errored");
    assert_eq!(saga["steps"][0]["compensation"]["status"], "done", "{saga}");
    no_script_runs(&browser, &base, &hostile).await;

    browser
        .goto(&format!("{base}/console/components"))
        .await
        .unwrap();
    let components = text_of(&browser, "tbody").await;
    assert!(components.contains("orchestrator") && components.contains("participant"));
    browser
        .goto(&format!("{base}/console/dead-letters"))
        .await
        .unwrap();
    assert!(text_of(&browser, "main").await.contains("No dead letters."));
    browser.close().await.unwrap();
}

/// Without the cookie, the console sends the browser to its login form; a wrong token is
/// refused there, the right one opens the saga list.
async fn log_in(browser: &Client, base: &str) {
    browser.goto(&format!("{base}/console")).await.unwrap();
    assert!(
        browser
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/console/login")
    );
    let form = browser
        .form(Locator::Css("form[action='/console/login']"))
        .await
        .unwrap();
    form.set_by_name("token", "nope").await.unwrap();
    form.submit().await.unwrap();
    browser
        .wait()
        .for_element(Locator::Css("[role=alert]"))
        .await
        .unwrap();
    assert!(
        text_of(browser, "[role=alert]")
            .await
            .contains("the admin token is wrong")
    );
    let form = browser
        .form(Locator::Css("form[action='/console/login']"))
        .await
        .unwrap();
    form.set_by_name("token", TOKEN).await.unwrap();
    form.submit().await.unwrap();
    wait_for(browser, "the saga list", |at| at == "/console?").await;
}

/// The list, filtered to the paused sagas (screenshot: console-list.png).
async fn filter_the_paused(browser: &Client) {
    let form = browser.form(Locator::Css("form.filters")).await.unwrap();
    form.set_by_name("status", "paused").await.unwrap();
    form.submit().await.unwrap();
    wait_for(browser, "the filtered list", |at| {
        at.contains("status=paused")
    })
    .await;
    let rows = browser.find_all(Locator::Css("tbody tr")).await.unwrap();
    assert_eq!(rows.len(), 2, "the two paused sagas");
    for row in &rows {
        assert!(row.text().await.unwrap().contains("paused"));
    }
    assert!(text_of(browser, ".counts").await.contains("paused: 2"));
    let shot = browser.screenshot().await.unwrap();
    std::fs::write(screenshots().join("console-list.png"), shot).unwrap();
}

/// One saga: its steps, then cancelled with a reason after a confirmation; it shows errored
/// (screenshot: console-saga.png).
async fn cancel_from_its_page(browser: &Client, paused: &str) {
    browser
        .find(Locator::Css(&format!("a[href='/console/sagas/{paused}']")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let saga_path = format!("/console/sagas/{paused}");
    wait_for(browser, "the saga page", |at| at.starts_with(&saga_path)).await;
    assert!(text_of(browser, "h1").await.contains(paused));
    assert_eq!(
        browser
            .find_all(Locator::Css(".track span"))
            .await
            .unwrap()
            .len(),
        2
    );
    // Each step's callbacks' CPU time, from the saga's history.
    let cpu = browser.find_all(Locator::Css("td.cpu")).await.unwrap();
    assert_eq!(cpu.len(), 2, "a CPU time per step");
    for cell in cpu {
        assert!(cell.text().await.unwrap().ends_with(" µs"));
    }
    browser
        .find(Locator::Css("form[action$='/cancel'] input[name=reason]"))
        .await
        .unwrap()
        .send_keys("from the console")
        .await
        .unwrap();
    browser
        .find(Locator::Css("form[action$='/cancel'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.accept_alert().await.unwrap();
    browser
        .wait()
        .for_element(Locator::Css(".status-errored"))
        .await
        .unwrap();
    assert!(
        text_of(browser, "[role=alert]")
            .await
            .contains("cancelled by the operator: from the console")
    );
    let shot = browser.screenshot().await.unwrap();
    std::fs::write(screenshots().join("console-saga.png"), shot).unwrap();
}

/// A context holding a script is shown as text; no script runs.
async fn no_script_runs(browser: &Client, base: &str, hostile: &str) {
    browser
        .goto(&format!("{base}/console/sagas/{hostile}"))
        .await
        .unwrap();
    assert!(
        text_of(browser, "pre")
            .await
            .contains("<script>window.pwned=1</script>")
    );
    assert!(
        browser
            .find_all(Locator::Css("script"))
            .await
            .unwrap()
            .is_empty()
    );
    let pwned = browser
        .execute("return window.pwned === undefined", vec![])
        .await
        .unwrap();
    assert_eq!(pwned, json!(true));
}

#[tokio::test]
async fn the_console_escapes_what_sagas_say_and_refuses_forms_from_elsewhere() {
    let dir = TempDir::new("console-http");
    let host = Host::start_with(
        &dir,
        &["test_orchestrator", "test_participant"],
        &["--admin-token", TOKEN, "--retry-delay-ms", "300000"],
    );
    let id = start_paused(&host, "<script>alert(1)</script>").await;
    let http = host.http();
    let anonymous = http.get(&format!("/console/sagas/{id}")).await;
    assert_eq!(
        anonymous.status, 303,
        "to the login form: {}",
        anonymous.body
    );
    let form = "application/x-www-form-urlencoded";
    let wrong = http
        .send("POST", "/console/login", Some(form), b"token=nope".to_vec())
        .await;
    assert_eq!(wrong.status, 401);
    assert!(
        wrong.body.contains("the admin token is wrong"),
        "{}",
        wrong.body
    );
    let login = http
        .send(
            "POST",
            "/console/login",
            Some(form),
            format!("token={TOKEN}").into_bytes(),
        )
        .await;
    assert_eq!(login.status, 303, "{}", login.body);
    let set_cookie = login
        .header("set-cookie")
        .expect("a session cookie")
        .to_string();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let page = http
        .send_with(
            "GET",
            &format!("/console/sagas/{id}"),
            &[("cookie", &cookie)],
            Vec::new(),
        )
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("<script>alert(1)"), "{}", page.body);

    forms_from_elsewhere_are_refused(http, &id, &cookie).await;
}

/// A cancel posted from another site, or with a stale form token, is refused and changes
/// nothing.
async fn forms_from_elsewhere_are_refused(http: &common::Http, id: &str, cookie: &str) {
    let form = "application/x-www-form-urlencoded";
    let forged = http
        .send_with(
            "POST",
            &format!("/console/sagas/{id}/cancel"),
            &[
                ("content-type", form),
                ("cookie", cookie),
                ("origin", "http://evil.example"),
            ],
            b"csrf=x&reason=forged".to_vec(),
        )
        .await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    let stale = http
        .send_with(
            "POST",
            &format!("/console/sagas/{id}/cancel"),
            &[("content-type", form), ("cookie", cookie)],
            b"csrf=x&reason=forged".to_vec(),
        )
        .await;
    assert_eq!(stale.status, 403, "{}", stale.body);
    assert!(stale.body.contains("this form is stale"), "{}", stale.body);
    let saga = http
        .admin("GET", &format!("/sagas/{id}"), Some(TOKEN))
        .await
        .json();
    assert_eq!(saga["status"], "paused");
}

#[tokio::test]
async fn the_console_is_off_without_an_admin_token() {
    let dir = TempDir::new("console-off");
    let host = Host::start(&dir, &["test_orchestrator", "test_participant"]);
    for path in ["/console", "/console/login", "/console/components"] {
        let off = host.http().get(path).await;
        assert_eq!(off.status, 403, "{path}: {}", off.body);
        assert!(
            off.body.contains("start the host with --admin-token"),
            "{path}: {}",
            off.body
        );
    }
}

#[tokio::test]
async fn an_operator_deploys_and_removes_a_service_and_redrives_a_dead_letter_in_chromium() {
    let dir = TempDir::new("console-deploy");
    let host = Host::start_with(
        &dir,
        &["test_orchestrator", "test_participant"],
        &[
            "--admin-token",
            TOKEN,
            "--delivery-attempts",
            "3",
            "--retry-delay-ms",
            "20",
        ],
    );
    let http = host.http();
    let alarm = http
        .post_json("/alarm", &json!({"key": "console-alarm"}))
        .await;
    assert_eq!(alarm.status, 200, "{}", alarm.body);
    let base = format!("http://{}", host.addr);

    let driver = Driver::start();
    let browser = driver.browser().await;
    log_in(&browser, &base).await;
    deploy_by_upload(&browser, &base).await;
    let components = http
        .admin("GET", "/admin/components", Some(TOKEN))
        .await
        .json();
    assert!(
        components.to_string().contains(r#""name":"probe""#),
        "{components}"
    );
    remove_the_probe(&browser).await;
    let components = http
        .admin("GET", "/admin/components", Some(TOKEN))
        .await
        .json();
    assert!(
        !components.to_string().contains(r#""name":"probe""#),
        "{components}"
    );
    redrive_the_alarm(&browser, &base, http).await;
    browser.close().await.unwrap();
}

/// The probe component, chosen in the file input and deployed: the page says so and lists it.
async fn deploy_by_upload(browser: &Client, base: &str) {
    browser
        .goto(&format!("{base}/console/components"))
        .await
        .unwrap();
    let file = common::component("test_probe");
    browser
        .find(Locator::Css("form#upload input[type=file]"))
        .await
        .unwrap()
        .send_keys(&file.canonicalize().unwrap().to_string_lossy())
        .await
        .unwrap();
    browser
        .find(Locator::Css("form#upload button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(browser, "the components after the upload", |at| {
        at.contains("deployed=probe")
    })
    .await;
    assert!(
        text_of(browser, "[role=status]")
            .await
            .contains("Deployed probe.")
    );
    assert!(text_of(browser, "tbody").await.contains("probe"));
}

/// The probe's Remove button, confirmed: the probe is gone from the list.
async fn remove_the_probe(browser: &Client) {
    browser
        .find(Locator::Css("form[data-name=probe] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.accept_alert().await.unwrap();
    wait_for(browser, "the components after the removal", |at| {
        at == "/console/components?"
    })
    .await;
    assert!(
        browser
            .find_all(Locator::Css("form[data-name=probe]"))
            .await
            .unwrap()
            .is_empty()
    );
}

/// The alarm the participant kept failing shows in the dead letters with its last error; once
/// the participant is fixed, Redrive has it handled.
async fn redrive_the_alarm(browser: &Client, base: &str, http: &common::Http) {
    let letters = format!("{base}/console/dead-letters");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        browser.goto(&letters).await.unwrap();
        if text_of(browser, "main")
            .await
            .contains("broken until POST /switch")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the alarm was not dead-lettered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(text_of(browser, "tbody").await.contains("Alarm"));
    assert_eq!(http.post_json("/switch", &json!(null)).await.status, 200);
    browser
        .find(Locator::Css("form[action$='/redrive'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(browser, "main", |text| text.contains("No dead letters.")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while http.get("/effects/console-alarm").await.json()["counts"]["alarm"] != 1 {
        assert!(
            Instant::now() < deadline,
            "the redriven alarm was not handled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
