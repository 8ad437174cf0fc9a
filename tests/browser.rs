//! A headless Chromium for the dashboard tests: starts Debian's `chromedriver` on a free
//! port, opens a WebDriver session with `fantoccini`, and offers blocking calls in the style of
//! the rest of the harness (the async client runs on a runtime owned by the [`Browser`]).
//!
//! Console messages come from chromedriver's log endpoint (`goog:loggingPrefs`), so an
//! error the page never handles, a failed request or a Content-Security-Policy violation
//! is seen by the test even though the page itself does not report it.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// The viewport of every screenshot.
const WIDTH: u32 = 1400;
const HEIGHT: u32 = 1000;

pub struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
}

/// `POST /session/{id}/se/log`: chromedriver's browser log since the last read.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

/// `POST /session/{id}/goog/cdp/execute`: a Chrome DevTools protocol command.
#[derive(Debug)]
struct DevTools {
    cmd: &'static str,
    params: Value,
}

impl WebDriverCompatibleCommand for DevTools {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!(
            "session/{}/goog/cdp/execute",
            session.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        let body = json!({"cmd": self.cmd, "params": self.params});
        (http::Method::POST, Some(body.to_string()))
    }
}

fn chromedriver() -> PathBuf {
    std::env::var_os("CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("chromedriver"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

impl Browser {
    /// A fresh headless Chromium. Panics, saying what to install, when chromedriver is missing.
    pub fn start() -> Self {
        let port = free_port();
        let driver = Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start {}: {error}. The dashboard tests need Debian's chromium and \
                     chromium-driver (`apt-get install chromium chromium-driver`; `.ci/run` \
                     installs them) or CHROMEDRIVER=/path/to/chromedriver",
                    chromedriver().display()
                )
            });
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let mut chrome_options = json!({
            // --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     format!("--window-size={WIDTH},{HEIGHT}"), "--hide-scrollbars"],
        });
        if let Some(binary) = std::env::var_os("CHROME_BIN") {
            chrome_options["binary"] = json!(binary.to_string_lossy());
        }
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": chrome_options,
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("an object literal")
        };
        let client = runtime
            .block_on(
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(capabilities)
                    .connect(&format!("http://127.0.0.1:{port}")),
            )
            .expect("a WebDriver session with headless Chromium");
        Self {
            runtime,
            client: Some(client),
            driver,
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("an open session")
    }

    pub fn open(&self, url: &str) {
        self.runtime
            .block_on(self.client().goto(url))
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns what it returns.
    pub fn script(&self, script: &str, args: Vec<Value>) -> Value {
        self.runtime
            .block_on(self.client().execute(script, args))
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits until `condition` (a script returning a truthy value) holds; panics with
    /// `what` and the page's text after `timeout`.
    pub fn wait_until(&self, what: &str, condition: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.script(condition, vec![]);
            if !matches!(value, Value::Null | Value::Bool(false)) {
                return;
            }
            if Instant::now() > deadline {
                let text = self.script("return document.body.innerText", vec![]);
                panic!(
                    "gave up waiting for {what}; the page reads:\n{}",
                    text.as_str().unwrap_or("")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn click(&self, css: &str) {
        self.runtime
            .block_on(async { self.client().find(Locator::Css(css)).await?.click().await })
            .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
    }

    /// Types `text` into the field `css`, as a user would (key events).
    pub fn type_into(&self, css: &str, text: &str) {
        self.runtime
            .block_on(async {
                let field = self.client().find(Locator::Css(css)).await?;
                field.clear().await?;
                field.send_keys(text).await
            })
            .unwrap_or_else(|e| panic!("cannot type into {css}: {e}"));
    }

    /// The visible text of the first element matching `css`.
    pub fn text(&self, css: &str) -> String {
        self.runtime
            .block_on(async { self.client().find(Locator::Css(css)).await?.text().await })
            .unwrap_or_else(|e| panic!("no text at {css}: {e}"))
    }

    /// Saves a screenshot of the whole page (beyond the viewport, through Chrome's DevTools
    /// protocol: WebDriver's own screenshot stops at the window, which cannot grow past the
    /// headless screen) as `NAME.png` in [`screenshots_dir`] and returns its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let height = self
            .script("return document.documentElement.scrollHeight", vec![])
            .as_u64()
            .unwrap_or(HEIGHT as u64)
            .clamp(HEIGHT as u64, 8000);
        let command = DevTools {
            cmd: "Page.captureScreenshot",
            params: json!({
                "format": "png",
                "captureBeyondViewport": true,
                "clip": {"x": 0, "y": 0, "width": WIDTH, "height": height, "scale": 1},
            }),
        };
        let answer = self
            .runtime
            .block_on(self.client().issue_cmd(command))
            .unwrap_or_else(|e| panic!("cannot take a screenshot: {e}"));
        let png = base64::engine::general_purpose::STANDARD
            .decode(answer["data"].as_str().expect("base64 PNG data"))
            .expect("valid base64");
        let dir = screenshots_dir();
        std::fs::create_dir_all(&dir).expect("the screenshots folder");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("the screenshot is written");
        path
    }

    /// Every browser log entry at level SEVERE (uncaught errors, `console.error`, failed
    /// requests, CSP violations) since the last call.
    pub fn console_errors(&self) -> Vec<String> {
        let log = self
            .runtime
            .block_on(self.client().issue_cmd(BrowserLog))
            .unwrap_or_else(|e| panic!("cannot read the browser log: {e}"));
        log.as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter(|entry| entry["level"] == "SEVERE")
                    .map(|entry| entry["message"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(client.close());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Where screenshots go: `RECOHOST_SCREENSHOTS_DIR` (`cargo xtask screenshots` points it at
/// `docs/screenshots/`), else `screenshots/` next to the server binary in the target folder,
/// so that a test run does not rewrite tracked files.
pub fn screenshots_dir() -> PathBuf {
    std::env::var_os("RECOHOST_SCREENSHOTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            crate::binary()
                .parent()
                .expect("the binary's folder")
                .join("screenshots")
        })
}
