//! The web console's files at `/ui/`: served without a key, under a strict policy; the APIs the
//! page calls still need one.

use crate::support::start;

#[tokio::test]
async fn the_console_is_served_without_a_key_under_a_strict_policy() {
    let env = start().await;
    let get = |path: &str| env.http.get(format!("{}{path}", env.gateway)).send();
    let page = get("/ui/").await.unwrap();
    assert_eq!(page.status(), 200);
    let h = page.headers().clone();
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    let html = page.text().await.unwrap();
    assert!(!html.contains("<script>"), "no inline script");
    for (file, kind) in [
        ("app.js", "text/javascript"),
        ("core.js", "text/javascript"),
        ("admin.js", "text/javascript"),
        ("member.js", "text/javascript"),
        ("style.css", "text/css"),
    ] {
        let a = get(&format!("/ui/{file}")).await.unwrap();
        assert_eq!(a.status(), 200, "{file}");
        assert!(a.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(kind));
    }
    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/ui", env.gateway))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.headers()["location"], "/ui/");
    assert_eq!(get("/ui/secrets.txt").await.unwrap().status(), 404);
    // The page's data is behind the key as ever.
    assert_eq!(get("/v1/me").await.unwrap().status(), 401);
    assert_eq!(get("/admin/spend").await.unwrap().status(), 401);
}
