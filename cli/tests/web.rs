//! The web catalog against the spawned binary: login, every page per
//! principal, CSRF, session expiry, and the bypass corpus through `/sql`.

use std::collections::BTreeSet;

use super::flight::{Server, start_on};
use super::ops::copy_mesh;

/// A client of one visitor: the session cookie it was given.
struct Browser {
    base: String,
    http: reqwest::Client,
    cookie: Option<String>,
    /// The session's CSRF token, once read.
    csrf: Option<String>,
}

impl Browser {
    fn new(server: &Server) -> Self {
        Self {
            base: format!(
                "http://127.0.0.1:{}",
                server.http.expect("started with --http")
            ),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookie: None,
            csrf: None,
        }
    }

    async fn login(server: &Server, user: &str) -> Self {
        let mut b = Self::new(server);
        let res = b
            .post(
                "/login",
                &[
                    ("user", user),
                    ("password", &format!("{user}-demo")),
                    ("next", "/me"),
                ],
            )
            .await;
        assert_eq!(res.0, 303, "{}", res.1);
        b
    }

    async fn get(&self, path: &str) -> (u16, String, reqwest::header::HeaderMap) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c);
        }
        let res = req.send().await.unwrap();
        let (status, headers) = (res.status().as_u16(), res.headers().clone());
        (status, res.text().await.unwrap(), headers)
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> (u16, String) {
        let mut req = self.http.post(format!("{}{path}", self.base)).form(form);
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c);
        }
        let res = req.send().await.unwrap();
        if let Some(set) = res.headers().get("set-cookie") {
            let set = set.to_str().unwrap();
            let pair = set.split(';').next().unwrap().to_string();
            self.cookie = (!pair.ends_with('=')).then_some(pair);
        }
        let location = res
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_string());
        let status = res.status().as_u16();
        let body = res.text().await.unwrap();
        (status, location.map_or(body, |l| format!("-> {l}")))
    }

    /// The CSRF token of the visitor's forms.
    async fn csrf(&self) -> String {
        let (_, page, _) = self.get("/sql").await;
        let at = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
        page[at..at + 64].to_string()
    }

    async fn sql(&mut self, sql: &str, format: &str) -> (u16, String) {
        let csrf = match &self.csrf {
            Some(c) => c.clone(),
            None => {
                let c = self.csrf().await;
                self.csrf = Some(c.clone());
                c
            }
        };
        self.post("/sql", &[("sql", sql), ("csrf", &csrf), ("format", format)])
            .await
    }
}

fn text(html: &str) -> String {
    let mut out = String::new();
    let mut tag = false;
    for c in html.chars() {
        match c {
            '<' => tag = true,
            '>' => {
                tag = false;
                out.push(' ');
            }
            c if !tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A page without the `/sql` form's textarea (the statement as typed).
fn without_form(body: &str) -> String {
    match (body.find("<textarea"), body.find("</textarea>")) {
        (Some(a), Some(b)) if a < b => format!("{}{}", &body[..a], &body[b..]),
        _ => body.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_pages_and_security_headers() {
    let (dir, mesh) = copy_mesh();
    let audit = dir.path().join("audit.jsonl");
    let server = start_on(
        &mesh,
        &[
            "--http",
            "127.0.0.1:0",
            "--audit-log",
            audit.to_str().unwrap(),
        ],
        &[],
    );
    let anonymous = Browser::new(&server);
    // Every page needs a session; the API answers 401.
    let (status, _, headers) = anonymous.get("/products").await;
    assert_eq!(status, 303);
    assert_eq!(headers["location"], "/login?next=/products");
    assert_eq!(anonymous.get("/api/products").await.0, 401);
    let (status, page, headers) = anonymous.get("/login").await;
    assert_eq!(status, 200);
    assert!(page.contains("name=\"password\""), "{page}");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(headers["x-frame-options"], "DENY");
    // No inline script or style anywhere.
    assert!(
        !page.contains("<script") && !page.contains("style="),
        "{page}"
    );
    // A wrong password: 401 and the form again, no cookie.
    let mut wrong = Browser::new(&server);
    let (status, page) = wrong
        .post("/login", &[("user", "ana"), ("password", "nope")])
        .await;
    assert_eq!(status, 401, "{page}");
    assert!(page.contains("invalid credentials"), "{page}");
    assert!(wrong.cookie.is_none());
    // The right one: an HttpOnly, SameSite=Strict cookie and the page asked
    // for (never another site).
    let res = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{}/login", anonymous.base))
        .form(&[
            ("user", "ana"),
            ("password", "ana-demo"),
            ("next", "//evil.example/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 303);
    assert_eq!(res.headers()["location"], "/");
    let cookie = res.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("Max-Age="),
        "{cookie}"
    );

    let ana = Browser::login(&server, "ana").await;
    // The product list: search, readability and whom to ask.
    let (status, page, _) = ana.get("/products?q=payments").await;
    assert_eq!(status, 200);
    let t = text(&page);
    // The transactions, and the Customer 360 that sums them.
    assert!(t.contains("2 of 6 products"), "{t}");
    assert!(
        t.contains("you may not read it Ask cfo@example.com, paul@example.com"),
        "{t}"
    );
    let (_, page, _) = ana.get("/products?domain=sales").await;
    assert!(text(&page).contains("1 of 6 products"));
    // A product page: owner, tables, quality, lineage as inline SVG.
    let (status, page, _) = ana
        .get("/products/urn%3Adataproduct%3Asales%3Aorders")
        .await;
    assert_eq!(status, 200);
    assert!(page.contains("<svg class=\"lineage\""), "{page}");
    let t = text(&page);
    assert!(
        t.contains("sales-data") && t.contains("alice@example.com"),
        "{t}"
    );
    assert!(t.contains("sales.orders"), "{t}");
    // A table ana reads: masked columns marked, her row filter with her
    // region.
    let (_, page, _) = ana.get("/tables/sales.orders").await;
    let t = text(&page);
    assert!(
        t.contains("Row filters applied to you: own_region: \"region\" = 'EMEA'"),
        "{t}"
    );
    assert!(t.contains("masked: hash policy `pii-hash-default`"), "{t}");
    assert!(
        t.contains("masked: partial contract sales/orders.odcs.yaml"),
        "{t}"
    );
    // One she may not: no data, how to get access.
    let (_, page, _) = ana.get("/tables/payments.transactions").await;
    let t = text(&page);
    assert!(
        t.contains(
            "You may not read this table: needs one of the roles `global-analyst`, `finance`"
        ),
        "{t}"
    );
    assert!(!t.contains("Query it"), "{t}");
    // Who she is and what she may see.
    let (_, page, _) = ana.get("/me").await;
    let t = text(&page);
    assert!(t.contains("Roles: analyst") && t.contains("region"), "{t}");
    assert!(t.contains("payments.transactions false"), "{t}");
    let (_, page, _) = ana.get("/lineage").await;
    assert!(
        page.contains("/products/urn%3Adataproduct%3Amarketing%3Asegments"),
        "{page}"
    );
    // The JSON API, with the same session, and with a bearer token.
    let (status, body, headers) = ana.get("/api/products?q=orders").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    let products: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        products
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["product_id"] == "urn:dataproduct:sales:orders")
    );
    // The session token as a bearer token (what a script or an SSO proxy
    // sends): no cookie, so no CSRF token is needed either.
    let token = ana
        .cookie
        .as_deref()
        .unwrap()
        .trim_start_matches("meshq_session=");
    let client = reqwest::Client::new();
    let res = client
        .get(format!("{}/api/me", ana.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let res = client
        .post(format!("{}/sql", ana.base))
        .bearer_auth(token)
        .form(&[
            (
                "sql",
                "SELECT region, count(*) AS n FROM sales.orders GROUP BY 1",
            ),
            ("format", "csv"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert!(res.text().await.unwrap().starts_with("region,n\nEMEA,"));
    let res = client
        .get(format!("{}/api/me", ana.base))
        .bearer_auth("not-a-session")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let (_, body, _) = ana.get("/api/tables/sales.orders").await;
    let columns: serde_json::Value = serde_json::from_str(&body).unwrap();
    let email = columns
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["column_name"] == "email")
        .unwrap();
    assert_eq!(email["masked"], true);
    // Page views and failed logins are audited like Flight SQL calls.
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(records.iter().any(|r| r["event"] == "web_page"
        && r["principal"] == "ana"
        && r["sql_shape"] == "/tables/payments.transactions"));
    assert!(
        records
            .iter()
            .any(|r| r["event"] == "auth_failure" && r["user"] == "ana")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_runs_as_the_visitor_with_csrf_and_the_bypass_corpus_leaks_nothing() {
    // The test fixture (the demo's domains, smaller): the corpus runs fast.
    let dir = tempfile::tempdir().unwrap();
    let mesh = dir.path().join("mesh");
    meshq_tests::write_fixture_mesh(&mesh).await.unwrap();
    let server = start_on(&mesh, &["--http", "127.0.0.1:0"], &[]);
    let mut ana = Browser::login(&server, "ana").await;
    let mut pat = Browser::login(&server, "pat").await;
    // Masked values, her region only; CSV and Arrow downloads.
    let (status, page) = ana
        .sql("SELECT order_id, customer_id, email, region FROM sales.orders ORDER BY order_id LIMIT 3", "html")
        .await;
    assert_eq!(status, 200);
    let t = text(&page);
    assert!(t.contains("3 row(s) in"), "{t}");
    assert!(t.contains("***@***") && t.contains("EMEA"), "{t}");
    let (_, csv) = ana
        .sql(
            "SELECT region, count(*) AS n FROM sales.orders GROUP BY 1",
            "csv",
        )
        .await;
    assert_eq!(csv.lines().next(), Some("region,n"), "{csv}");
    assert_eq!(csv.lines().count(), 2, "{csv}");
    let (status, arrow) = ana.sql("SELECT 1 AS one", "arrow").await;
    assert_eq!(status, 200);
    assert!(!arrow.is_empty());
    // Errors as the shell shows them.
    let (_, page) = ana.sql("SELECT * FROM payments.transactions", "html").await;
    assert!(
        text(&page)
            .contains("Error: permission denied: `ana` may not read table `payments.transactions`"),
        "{}",
        text(&page)
    );
    // Without the session's CSRF token: refused, nothing runs.
    let (status, body) = ana
        .post(
            "/sql",
            &[("sql", "SELECT 1"), ("csrf", "0000"), ("format", "html")],
        )
        .await;
    assert_eq!(status, 403, "{body}");
    // pat's token does not work in ana's session either.
    let pats = pat.csrf().await;
    let (status, _) = ana
        .post(
            "/sql",
            &[("sql", "SELECT 1"), ("csrf", &pats), ("format", "html")],
        )
        .await;
    assert_eq!(status, 403);

    // The bypass corpus through /sql: nothing pat sees raw shows in any of
    // ana's pages or downloads.
    let mut secrets = BTreeSet::new();
    for sql in [
        "SELECT customer_id, email, full_name, phone FROM customers.profiles",
        "SELECT email FROM sales.orders WHERE email IS NOT NULL",
        "SELECT order_id FROM sales.orders WHERE region <> 'EMEA'",
        "SELECT card_number, payment_id FROM payments.transactions WHERE card_number IS NOT NULL",
    ] {
        let (_, csv) = pat.sql(sql, "csv").await;
        for line in csv.lines().skip(1) {
            for v in line.split(',') {
                if v.len() > 4 {
                    secrets.insert(v.to_string());
                }
            }
        }
    }
    assert!(secrets.len() > 300, "{}", secrets.len());
    let corpus = meshq_tests::bypass_corpus(&mesh.display().to_string());
    let mut answered = 0;
    for (i, sql) in corpus.iter().enumerate() {
        // Every statement as a page; the first ones also as a download.
        let formats: &[&str] = if i < 20 { &["html", "csv"] } else { &["html"] };
        for format in formats {
            let (status, body) = ana.sql(sql, format).await;
            if status == 200 && !body.contains("class=\"error\"") {
                answered += 1;
            }
            // The statement itself is shown back in the form: what ana
            // typed is not a leak.
            let body = without_form(&body);
            if let Some(s) = secrets.iter().find(|s| body.contains(s.as_str())) {
                panic!("`{sql}` ({format}) shows the raw value {s}");
            }
        }
    }
    assert!(answered > 30, "only {answered} answered");
    // The detector finds what it looks for: pat's answers hold them.
    let (_, page) = pat
        .sql("SELECT email FROM customers.profiles LIMIT 5", "html")
        .await;
    assert!(secrets.iter().any(|s| page.contains(s.as_str())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_on_logout_and_expire() {
    let (_dir, mesh) = copy_mesh();
    let platform = mesh.join("meshq.yaml");
    let yaml = std::fs::read_to_string(&platform).unwrap();
    std::fs::write(
        &platform,
        format!(
            "{yaml}auth: {{ web_session_ttl: 2s }}\ndiscovery: {{ visibility: readable-only }}\n"
        ),
    )
    .unwrap();
    let server = start_on(&mesh, &["--http", "127.0.0.1:0"], &[]);
    let mut ana = Browser::login(&server, "ana").await;
    assert_eq!(ana.get("/me").await.0, 200);
    // `discovery.visibility: readable-only` hides here what it hides in
    // `meta`: the payments product she may not read.
    let (_, page, _) = ana.get("/products").await;
    assert!(!page.contains("payments:transactions"), "{page}");
    assert!(page.contains("sales:orders"), "{page}");
    let (status, _, _) = ana
        .get("/products/urn%3Adataproduct%3Apayments%3Atransactions")
        .await;
    assert_eq!(status, 404);
    assert_eq!(ana.get("/tables/payments.transactions").await.0, 404);
    // Logging out needs the CSRF token too.
    let (status, _) = ana.post("/logout", &[("csrf", "nope")]).await;
    assert_eq!(status, 403);
    let csrf = ana.csrf().await;
    let kept = ana.cookie.clone();
    let (status, to) = ana.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!((status, to.as_str()), (303, "-> /login"));
    // The old cookie no longer works.
    ana.cookie = kept;
    assert_eq!(ana.get("/me").await.0, 303);
    // A login lasts `auth.web_session_ttl`.
    let ana = Browser::login(&server, "ana").await;
    assert_eq!(ana.get("/me").await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    // Past its lifetime the login ends, sent as a bearer token as well as
    // as the cookie.
    let token = ana
        .cookie
        .as_deref()
        .unwrap()
        .trim_start_matches("meshq_session=")
        .to_string();
    let res = reqwest::Client::new()
        .get(format!("{}/api/me", ana.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let (status, _, headers) = ana.get("/me").await;
    assert_eq!(status, 303);
    assert_eq!(headers["location"], "/login?next=/me");
    // Guessing passwords is throttled by the same counters as Flight SQL
    // logins: after repeated failures from one address, refused at once.
    let mut guesser = Browser::new(&server);
    let mut last = (0, String::new());
    let mut tries = 0;
    while last.0 != 429 && tries < 12 {
        tries += 1;
        last = guesser
            .post("/login", &[("user", "ben"), ("password", "guess")])
            .await;
    }
    assert_eq!(last.0, 429, "after {tries}: {}", last.1);
    assert!(last.1.contains("too many failed logins"), "{}", last.1);
}

/// One HTTP/1.1 exchange over TLS, trusting `ca` for `localhost`.
async fn https(port: u16, ca: &str, request: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    let der = rustls::pki_types::CertificateDer::from_pem_slice(ca.as_bytes()).unwrap();
    roots.add(der).unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_certificate_the_catalog_is_https_and_its_cookie_secure() {
    let (dir, mesh) = copy_mesh();
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, key.cert.pem()).unwrap();
    std::fs::write(&key_path, key.signing_key.serialize_pem()).unwrap();
    let server = start_on(
        &mesh,
        &[
            "--http",
            "127.0.0.1:0",
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
        ],
        &[],
    );
    let port = server.http.unwrap();
    assert!(
        server
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l == &format!("meshq web catalog on https://127.0.0.1:{port}/")),
        "{:?}",
        server.log.lock().unwrap()
    );
    let body = "user=ana&password=ana-demo&next=%2Fme";
    let response = https(
        port,
        &key.cert.pem(),
        format!(
            "POST /login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 303"), "{response}");
    let cookie = response
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap();
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    // Plain HTTP gets no page.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/login"))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}
