//! Applications and JWT end to end: the `Host` header and the socket's
//! `app` pick the application, tokens are made here with real keys (an HMAC
//! secret and a freshly generated RSA key pair), and every attack the
//! gateway must refuse is shown to stop before the plugin runs.

use std::os::unix::fs::PermissionsExt;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ferry_tests::{
    Client, Ferry, HttpReply, assert_error, expect_error, expect_success, ferry_bin,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const SHOP_SECRET: &str = "shop-secret-for-tests-0123456789abcdef";
const SHOP_ISS: &str = "https://auth.shop.example";
const BLOG_ISS: &str = "https://auth.blog.example";

/// Two applications: `shop` verifies HS256 with a secret from the
/// environment and reads the tenant from `tenant`; `blog` verifies RS256
/// with a public key file and a JWK set. `echo` is in both, `faulty` only in
/// `blog`; `echo.sum` is public.
const APPS: &str = "
apps:
  shop:
    hosts: [shop.localhost]
    services: [echo]
    auth:
      jwt:
        algorithms: [HS256]
        secret_env: FERRY_TEST_SHOP_SECRET
        issuer: https://auth.shop.example
        audience: shop
        tenant_claim: tenant
  blog:
    hosts: [blog.localhost, Blog.Example]
    services: [echo, faulty]
    auth:
      jwt:
        algorithms: [RS256]
        public_key_file: blog.pem
        issuer: https://auth.blog.example
        audience: blog
  wiki:
    hosts: [wiki.localhost]
    services: [echo]
    auth:
      jwt:
        algorithms: [RS256]
        jwks_file: wiki.jwks
        issuer: https://auth.blog.example
        audience: wiki
";

struct RsaKeys {
    private_pem: String,
    public_pem: String,
    jwks: String,
}

/// One RSA key pair per test binary: generating it takes a moment.
fn rsa_keys() -> &'static RsaKeys {
    static KEYS: OnceLock<RsaKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        use rsa::traits::PublicKeyParts;
        let private = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).expect("RSA key");
        let public = private.to_public_key();
        let jwks = json!({"keys": [{
            "kty": "RSA",
            "kid": "wiki-1",
            "alg": "RS256",
            "use": "sig",
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        }]});
        RsaKeys {
            private_pem: private.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
            public_pem: public.to_public_key_pem(LineEnding::LF).unwrap(),
            jwks: jwks.to_string(),
        }
    })
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims that pass every check of application `aud` issued by `iss`.
fn claims(iss: &str, aud: &str, sub: &str) -> Value {
    json!({"iss": iss, "aud": aud, "sub": sub, "iat": now(), "exp": now() + 600})
}

fn shop_claims() -> Value {
    let mut c = claims(SHOP_ISS, "shop", "alice");
    c["tenant"] = json!("acme");
    c
}

fn hs256(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn rs256(claims: &Value, kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_owned);
    let key = EncodingKey::from_rsa_pem(rsa_keys().private_pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// A token with `"alg": "none"` and no signature, as an attacker writes it.
fn unsigned(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

fn options() -> ferry_tests::Options {
    let keys = rsa_keys();
    Ferry::options()
        .plugin("echo", "echo", Some("public: [sum]\n"))
        .plugin("faulty", "faulty", None)
        .env("FERRY_TEST_SHOP_SECRET", SHOP_SECRET)
        .file("blog.pem", keys.public_pem.as_bytes())
        .file("wiki.jwks", keys.jwks.as_bytes())
        .config(APPS)
}

/// `POST /v1/echo/{action}` on `host`, with extra headers.
async fn echo(ferry: &Ferry, host: &str, action: &str, headers: &[(&str, &str)]) -> HttpReply {
    let mut all = vec![("Host", host)];
    all.extend_from_slice(headers);
    ferry
        .http(
            "POST",
            &format!("/v1/echo/{action}"),
            &all,
            br#"{"numbers": [1, 2]}"#,
        )
        .await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_token_reaches_the_plugin_with_its_claims() {
    let ferry = options()
        .socket("{path: run/ferry.sock, app: shop}")
        .start();

    let token = hs256(&shop_claims(), SHOP_SECRET.as_bytes());
    let auth = bearer(&token);
    let reply = echo(
        &ferry,
        "shop.localhost:8080",
        "echo",
        &[("Authorization", &auth)],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let ctx = &reply.json()["ctx"];
    assert_eq!(ctx["app"], "shop");
    assert_eq!(ctx["subject"], "alice");
    assert_eq!(ctx["tenant"], "acme");
    assert_eq!(ctx["claims"]["tenant"], "acme");
    assert_eq!(ctx["claims"]["iss"], SHOP_ISS);

    // A tenant header that agrees with the token is fine.
    let reply = echo(
        &ferry,
        "shop.localhost",
        "echo",
        &[("Authorization", &auth), ("X-Tenant-Id", "acme")],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    // The same token in the socket's `token` field; the socket's default
    // application is `shop`.
    let mut client = ferry.connect().await;
    let response = client
        .request(&json!({"id": 1, "service": "echo", "action": "echo", "token": token}))
        .await;
    let ctx = &expect_success(&response)["ctx"];
    assert_eq!(
        (&ctx["app"], &ctx["subject"], &ctx["tenant"]),
        (&json!("shop"), &json!("alice"), &json!("acme"))
    );

    // RS256 with the public key file, through a host name in another case.
    let blog = rs256(&claims(BLOG_ISS, "blog", "bob"), None);
    let reply = echo(
        &ferry,
        "BLOG.example",
        "echo",
        &[("Authorization", &bearer(&blog))],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["ctx"]["app"], "blog");
    assert_eq!(reply.json()["ctx"]["subject"], "bob");
    assert_eq!(reply.json()["ctx"]["tenant"], Value::Null);

    // RS256 from a JWK set, picked by `kid`; an unknown `kid` is refused.
    let wiki = claims(BLOG_ISS, "wiki", "carol");
    let reply = echo(
        &ferry,
        "wiki.localhost",
        "echo",
        &[("Authorization", &bearer(&rs256(&wiki, Some("wiki-1"))))],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["ctx"]["subject"], "carol");
    let reply = echo(
        &ferry,
        "wiki.localhost",
        "echo",
        &[("Authorization", &bearer(&rs256(&wiki, Some("wiki-9"))))],
    )
    .await;
    assert!(assert_error(&reply, 401, "unauthorized").contains("wiki-9"));

    // `/v1/rpc` takes the token from the header or from the envelope, not both.
    let envelope = json!({"id": 7, "service": "echo", "action": "echo"});
    let reply = ferry
        .http(
            "POST",
            "/v1/rpc",
            &[("Host", "shop.localhost"), ("Authorization", &auth)],
            envelope.to_string().as_bytes(),
        )
        .await;
    assert_eq!(
        reply.json()["result"]["ctx"]["subject"],
        "alice",
        "{}",
        reply.text()
    );
    let mut with_token = envelope.clone();
    with_token["token"] = json!(token);
    let reply = ferry
        .http(
            "POST",
            "/v1/rpc",
            &[("Host", "shop.localhost")],
            with_token.to_string().as_bytes(),
        )
        .await;
    assert_eq!(
        reply.json()["result"]["ctx"]["subject"],
        "alice",
        "{}",
        reply.text()
    );
    let reply = ferry
        .http(
            "POST",
            "/v1/rpc",
            &[("Host", "shop.localhost"), ("Authorization", &auth)],
            with_token.to_string().as_bytes(),
        )
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn public_actions_hosts_and_service_lists() {
    let ferry = options().start();

    // `sum` is public: no token needed. A token that is sent is still checked.
    let reply = echo(&ferry, "shop.localhost", "sum", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["sum"], 3);
    let reply = echo(
        &ferry,
        "shop.localhost",
        "sum",
        &[("Authorization", "Bearer x.y.z")],
    )
    .await;
    assert_error(&reply, 401, "unauthorized");
    assert_eq!(reply.header("www-authenticate"), Some("Bearer"));

    // An unknown host is no application.
    let reply = echo(&ferry, "evil.localhost", "sum", &[]).await;
    assert!(assert_error(&reply, 404, "not_found").contains("evil.localhost"));

    // `faulty` is in `blog` only: not reachable through `shop`, even with a
    // valid token, and the plugin does not run.
    let before = ferry.plugin_requests("faulty").await;
    let token = hs256(&shop_claims(), SHOP_SECRET.as_bytes());
    let reply = ferry
        .http(
            "POST",
            "/v1/faulty/ok",
            &[
                ("Host", "shop.localhost"),
                ("Authorization", &bearer(&token)),
            ],
            b"",
        )
        .await;
    assert!(
        assert_error(&reply, 404, "not_found").contains("`shop` has no service named `faulty`")
    );
    let blog = rs256(&claims(BLOG_ISS, "blog", "bob"), None);
    let reply = ferry
        .http(
            "POST",
            "/v1/faulty/ok",
            &[
                ("Host", "blog.localhost"),
                ("Authorization", &bearer(&blog)),
            ],
            b"",
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(ferry.plugin_requests("faulty").await, before + 1);

    // Three applications and no `socket.app`: a socket request must say which.
    let mut client = ferry.connect().await;
    let response = client
        .request(&json!({"id": 1, "service": "echo", "action": "sum", "params": {"numbers": [2]}}))
        .await;
    assert!(expect_error(&response, "bad_request").contains("app"));
    let response = client
        .request(&json!({"id": 2, "app": "shop", "service": "echo", "action": "sum", "params": {"numbers": [2]}}))
        .await;
    assert_eq!(expect_success(&response)["sum"], 2);
    let response = client
        .request(&json!({"id": 3, "app": "nope", "service": "echo", "action": "sum"}))
        .await;
    expect_error(&response, "not_found");

    // Status shows the applications without any key material.
    let status = ferry.admin_http("GET", "/v1/status").await.json();
    let apps = status["apps"].as_array().unwrap();
    assert_eq!(apps.len(), 3, "{status}");
    assert!(!status.to_string().contains(SHOP_SECRET));
}

/// One attack: how it is sent, and what the refusal must say.
struct Attack {
    name: &'static str,
    host: &'static str,
    authorization: Option<String>,
    tenant: Option<&'static str>,
    status: u16,
    code: &'static str,
    says: &'static str,
}

#[tokio::test(flavor = "multi_thread")]
async fn attacks_over_http_never_reach_the_plugin() {
    let ferry = options().start();
    let keys = rsa_keys();
    let shop = |edit: &dyn Fn(&mut Value)| {
        let mut c = shop_claims();
        edit(&mut c);
        bearer(&hs256(&c, SHOP_SECRET.as_bytes()))
    };
    let valid_shop = hs256(&shop_claims(), SHOP_SECRET.as_bytes());
    // The same claims with the signature of a different payload.
    let tampered = {
        let mut c = shop_claims();
        c["sub"] = json!("admin");
        let forged_payload = URL_SAFE_NO_PAD.encode(c.to_string());
        let parts: Vec<&str> = valid_shop.split('.').collect();
        format!("{}.{forged_payload}.{}", parts[0], parts[2])
    };
    let unauthorized = |name, host, authorization: Option<String>, says| Attack {
        name,
        host,
        authorization,
        tenant: None,
        status: 401,
        code: "unauthorized",
        says,
    };
    let attacks = [
        unauthorized(
            "alg none",
            "shop.localhost",
            Some(bearer(&unsigned(&shop_claims()))),
            "none",
        ),
        unauthorized(
            "HS256 signed with the RS256 public key",
            "blog.localhost",
            Some(bearer(&hs256(
                &claims(BLOG_ISS, "blog", "mallory"),
                keys.public_pem.as_bytes(),
            ))),
            "HS256 is not accepted",
        ),
        unauthorized(
            "expired",
            "shop.localhost",
            Some(shop(&|c| c["exp"] = json!(now() - 3600))),
            "expired",
        ),
        unauthorized(
            "not yet valid",
            "shop.localhost",
            Some(shop(&|c| c["nbf"] = json!(now() + 3600))),
            "not valid yet",
        ),
        unauthorized(
            "wrong issuer",
            "shop.localhost",
            Some(shop(&|c| c["iss"] = json!("https://evil.example"))),
            "issuer",
        ),
        unauthorized(
            "wrong audience",
            "shop.localhost",
            Some(shop(&|c| c["aud"] = json!("blog"))),
            "audience",
        ),
        unauthorized(
            "no expiry",
            "shop.localhost",
            Some(shop(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            })),
            "`exp` claim is missing",
        ),
        unauthorized(
            "bad signature",
            "shop.localhost",
            Some(bearer(&hs256(
                &shop_claims(),
                b"another-secret-of-the-same-kind-0123456",
            ))),
            "signature",
        ),
        unauthorized(
            "tampered payload",
            "shop.localhost",
            Some(bearer(&tampered)),
            "signature",
        ),
        unauthorized(
            "shop's token at blog",
            "blog.localhost",
            Some(bearer(&valid_shop)),
            "HS256 is not accepted",
        ),
        unauthorized(
            "blog's token at shop",
            "shop.localhost",
            Some(bearer(&rs256(&claims(BLOG_ISS, "blog", "bob"), None))),
            "RS256 is not accepted",
        ),
        unauthorized(
            "blog's token at wiki (same key kind, other audience)",
            "wiki.localhost",
            Some(bearer(&rs256(
                &claims(BLOG_ISS, "blog", "bob"),
                Some("wiki-1"),
            ))),
            "audience",
        ),
        unauthorized("missing token", "shop.localhost", None, "needs a token"),
        unauthorized(
            "Basic scheme",
            "shop.localhost",
            Some("Basic YWxpY2U6c2VjcmV0".into()),
            "malformed Authorization",
        ),
        unauthorized(
            "Bearer without token",
            "shop.localhost",
            Some("Bearer".into()),
            "malformed Authorization",
        ),
        unauthorized(
            "two tokens",
            "shop.localhost",
            Some(format!("Bearer {valid_shop} {valid_shop}")),
            "malformed Authorization",
        ),
        unauthorized(
            "not a JWT",
            "shop.localhost",
            Some("Bearer not-a-jwt".into()),
            "malformed token",
        ),
        Attack {
            name: "tenant_id contradicting the token",
            host: "shop.localhost",
            authorization: Some(bearer(&valid_shop)),
            tenant: Some("globex"),
            status: 403,
            code: "forbidden",
            says: "contradicts",
        },
    ];

    let before = ferry.plugin_requests("echo").await;
    for attack in &attacks {
        let mut headers = Vec::new();
        if let Some(a) = &attack.authorization {
            headers.push(("Authorization", a.as_str()));
        }
        if let Some(t) = attack.tenant {
            headers.push(("X-Tenant-Id", t));
        }
        let reply = echo(&ferry, attack.host, "echo", &headers).await;
        assert_eq!(
            reply.status,
            attack.status,
            "{}: {}",
            attack.name,
            reply.text()
        );
        let message = assert_error(&reply, attack.status, attack.code);
        assert!(message.contains(attack.says), "{}: {message}", attack.name);
        assert_eq!(
            ferry.plugin_requests("echo").await,
            before,
            "{}: the plugin ran",
            attack.name
        );
    }

    // The control: the same request with the valid token does run the plugin.
    let reply = echo(
        &ferry,
        "shop.localhost",
        "echo",
        &[("Authorization", &bearer(&valid_shop))],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(ferry.plugin_requests("echo").await, before + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn attacks_over_the_socket_never_reach_the_plugin() {
    let ferry = options()
        .socket("{path: run/ferry.sock, app: shop}")
        .start();
    let valid_shop = hs256(&shop_claims(), SHOP_SECRET.as_bytes());
    let mut expired = shop_claims();
    expired["exp"] = json!(now() - 3600);
    let cases = [
        (
            "alg none",
            json!({"token": unsigned(&shop_claims())}),
            "unauthorized",
        ),
        (
            "expired",
            json!({"token": hs256(&expired, SHOP_SECRET.as_bytes())}),
            "unauthorized",
        ),
        ("missing token", json!({}), "unauthorized"),
        (
            "shop's token at blog",
            json!({"token": valid_shop, "app": "blog"}),
            "unauthorized",
        ),
        (
            "tenant_id contradicting the token",
            json!({"token": valid_shop, "tenant_id": "globex"}),
            "forbidden",
        ),
    ];
    let before = ferry.plugin_requests("echo").await;
    let mut client = ferry.connect().await;
    for (i, (name, fields, code)) in cases.iter().enumerate() {
        let mut request = json!({"id": i, "service": "echo", "action": "echo"});
        for (k, v) in fields.as_object().unwrap() {
            request[k] = v.clone();
        }
        let response = client.request(&request).await;
        assert_eq!(response["id"], i, "{name}");
        expect_error(&response, code);
        assert_eq!(
            ferry.plugin_requests("echo").await,
            before,
            "{name}: the plugin ran"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_files_get_their_mode_and_trust_is_opt_in() {
    // Default: 0660, not trusted, so a protected action needs a token.
    let ferry = options()
        .socket("{path: run/ferry.sock, app: shop}")
        .start();
    for path in [ferry.socket.clone(), ferry.service_socket("echo")] {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660, "{}", path.display());
    }
    let mut client = ferry.connect().await;
    let response = client
        .request(&json!({"id": 1, "service": "echo", "action": "echo"}))
        .await;
    expect_error(&response, "unauthorized");
    drop(ferry);

    // Trusted, with its own mode: local callers need no token there, while
    // HTTP still does.
    let ferry = options()
        .socket("{path: run/ferry.sock, app: shop, mode: \"0600\", trusted: true}")
        .start();
    for path in [ferry.socket.clone(), ferry.service_socket("echo")] {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
    let mut client = ferry.connect().await;
    let response = client
        .request(&json!({"id": 1, "service": "echo", "action": "echo", "tenant_id": "local"}))
        .await;
    let ctx = &expect_success(&response)["ctx"];
    assert_eq!(
        (&ctx["subject"], &ctx["tenant"]),
        (&Value::Null, &json!("local"))
    );
    let reply = echo(&ferry, "shop.localhost", "echo", &[]).await;
    assert_error(&reply, 401, "unauthorized");
}

#[tokio::test(flavor = "multi_thread")]
async fn peer_uids_outside_the_allow_list_are_refused() {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let allowed = options()
        .socket(&format!(
            "{{path: run/ferry.sock, app: shop, trusted: true, allow_uids: [{uid}]}}"
        ))
        .start();
    let mut client = allowed.connect().await;
    let response = client
        .request(&json!({"id": 1, "service": "echo", "action": "sum", "params": {"numbers": [1]}}))
        .await;
    expect_success(&response);

    let other = uid.wrapping_add(4242);
    let refused = options()
        .socket(&format!(
            "{{path: run/ferry.sock, app: shop, trusted: true, allow_uids: [{other}]}}"
        ))
        .start();
    let before = refused.plugin_requests("echo").await;
    for socket in [refused.socket.clone(), refused.service_socket("echo")] {
        let mut client = Client::connect(&socket).await;
        let _ = client
            .try_send(
                &json!({"id": 1, "service": "echo", "action": "sum", "params": {"numbers": [1]}}),
            )
            .await;
        let response = client.recv().await.expect("a refusal frame");
        assert_eq!(response["id"], Value::Null);
        let message = expect_error(&response, "forbidden");
        assert!(message.contains(&format!("uid {uid}")), "{message}");
        assert!(
            client.recv().await.is_none(),
            "the host closes after refusing"
        );
    }
    assert_eq!(refused.plugin_requests("echo").await, before);
    assert!(
        refused
            .log_with("refused a connection")
            .await
            .contains("refused a connection")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ferry_token_mints_for_hmac_apps_and_refuses_public_key_apps() {
    let ferry = options().start();
    let config = ferry.dir.join("ferry.yaml");
    let token = |args: &[&str]| {
        std::process::Command::new(ferry_bin())
            .arg("token")
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("FERRY_TEST_SHOP_SECRET", SHOP_SECRET)
            .output()
            .unwrap()
    };

    let out = token(&[
        "--app", "shop", "--sub", "dev", "--tenant", "acme", "--ttl", "10m",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let minted = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    // What it says, read without trusting it, then used for real.
    let payload: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(minted.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        payload["exp"].as_i64().unwrap() - payload["iat"].as_i64().unwrap(),
        600
    );
    assert_eq!(
        (&payload["iss"], &payload["aud"]),
        (&json!(SHOP_ISS), &json!("shop"))
    );
    let reply = echo(
        &ferry,
        "shop.localhost",
        "echo",
        &[("Authorization", &bearer(&minted))],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["ctx"]["subject"], "dev");
    assert_eq!(reply.json()["ctx"]["tenant"], "acme");

    let out = token(&["--app", "blog", "--sub", "dev"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("public keys only"), "{stderr}");
    assert!(out.stdout.is_empty());

    let out = token(&["--app", "nope", "--sub", "dev"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no application named `nope`"));

    let out = token(&["--app", "shop", "--sub", "dev", "--ttl", "soon"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bad_auth_config_is_refused_before_any_socket_opens() {
    let cases = [
        (
            "apps:\n  a:\n    services: [echo]\n    auth:\n      jwt:\n        algorithms: [HS256]\n        secret_env: FERRY_TEST_SHORT\n",
            "at least 32",
        ),
        (
            "apps:\n  a:\n    services: [echo]\n    auth:\n      jwt:\n        algorithms: [none]\n        secret_env: FERRY_TEST_SHORT\n",
            "unknown variant `none`",
        ),
        (
            "apps:\n  a:\n    services: [echo]\n    auth:\n      jwt:\n        algorithms: [HS256]\n        secret_env: FERRY_TEST_UNSET\n",
            "`FERRY_TEST_UNSET` is not set",
        ),
        (
            "apps:\n  a:\n    services: [echo]\n    auth:\n      jwt:\n        algorithms: [RS256]\n        secret_env: FERRY_TEST_SHORT\n",
            "no HS algorithm is allowed",
        ),
        (
            "apps:\n  a:\n    services: [echo]\n",
            "missing field `auth`",
        ),
        (
            "apps:\n  a:\n    hosts: [x.localhost]\n    services: [echo]\n    auth: none\n  b:\n    hosts: [X.localhost]\n    services: [echo]\n    auth: none\n",
            "claimed by both",
        ),
        (
            "socket: {path: run/ferry.sock, mode: \"0986\"}\n",
            "not a file mode",
        ),
        (
            "socket: {path: run/ferry.sock, mode: [6]}\n",
            "octal string",
        ),
        (
            "socket: {path: run/ferry.sock, app: ghost}\n",
            "no application named `ghost`",
        ),
    ];
    for (yaml, says) in cases {
        let dir = ferry_tests::scratch_dir();
        let config = dir.join("ferry.yaml");
        std::fs::write(&config, format!("http: null\n{yaml}")).unwrap();
        let out = serve_until_exit(
            std::process::Command::new(ferry_bin())
                .args(["serve", "--config"])
                .arg(&config)
                .env("FERRY_TEST_SHORT", "too-short"),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{yaml}: {stderr}");
        assert!(
            stderr.contains(says),
            "{yaml}: expected `{says}` in {stderr}"
        );
        assert!(
            !dir.join("run").exists(),
            "{yaml}: a socket folder was created"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Runs `command` and waits for it to exit; a host that starts serving
/// instead is killed, and the test fails rather than hangs.
fn serve_until_exit(command: &mut std::process::Command) -> std::process::Output {
    use std::process::Stdio;
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A host whose applications are given in `apps` (YAML), with the RSA key
/// files of the other tests beside the config.
fn host_with(apps: &str) -> Ferry {
    let keys = rsa_keys();
    Ferry::options()
        .plugin("echo", "echo", None)
        .env("FERRY_TEST_SHOP_SECRET", SHOP_SECRET)
        .file("blog.pem", keys.public_pem.as_bytes())
        .file("wiki.jwks", keys.jwks.as_bytes())
        .config(apps)
        .start()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allow_list_of_several_families_accepts_each() {
    let ferry = host_with(
        "apps:\n  mixed:\n    hosts: [mixed.localhost]\n    services: [echo]\n    auth:\n      jwt:\n        algorithms: [HS256, RS256]\n        secret_env: FERRY_TEST_SHOP_SECRET\n        public_key_file: blog.pem\n",
    );
    let claims = claims(SHOP_ISS, "mixed", "alice");
    for token in [hs256(&claims, SHOP_SECRET.as_bytes()), rs256(&claims, None)] {
        let auth = bearer(&token);
        let reply = echo(
            &ferry,
            "mixed.localhost",
            "echo",
            &[("Authorization", &auth)],
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["ctx"]["subject"], "alice");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kid_the_jwk_set_does_not_hold_is_refused() {
    // The set holds `wiki-1` only; the token names another key, and the
    // set's only key would verify it. It must not be tried.
    let ferry = host_with(
        "apps:\n  wiki:\n    hosts: [wiki.localhost]\n    services: [echo]\n    auth:\n      jwt:\n        algorithms: [RS256]\n        jwks_file: wiki.jwks\n",
    );
    let claims = claims(BLOG_ISS, "wiki", "bob");
    let auth = bearer(&rs256(&claims, Some("rotated-away")));
    let reply = echo(
        &ferry,
        "wiki.localhost",
        "echo",
        &[("Authorization", &auth)],
    )
    .await;
    let message = assert_error(&reply, 401, "unauthorized");
    assert!(message.contains("unknown key id"), "{message}");
    let auth = bearer(&rs256(&claims, Some("wiki-1")));
    let reply = echo(
        &ferry,
        "wiki.localhost",
        "echo",
        &[("Authorization", &auth)],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn applications_sharing_an_issuer_do_not_take_each_others_tokens() {
    // Same secret, same issuer, no audience configured: each application
    // requires its own name as the audience.
    let app = |name: &str| {
        format!(
            "  {name}:\n    hosts: [{name}.localhost]\n    services: [echo]\n    auth:\n      jwt:\n        algorithms: [HS256]\n        secret_env: FERRY_TEST_SHOP_SECRET\n        issuer: {SHOP_ISS}\n"
        )
    };
    let ferry = host_with(&format!("apps:\n{}{}", app("north"), app("south")));
    let north = bearer(&hs256(
        &claims(SHOP_ISS, "north", "carol"),
        SHOP_SECRET.as_bytes(),
    ));
    let reply = echo(
        &ferry,
        "north.localhost",
        "echo",
        &[("Authorization", &north)],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = echo(
        &ferry,
        "south.localhost",
        "echo",
        &[("Authorization", &north)],
    )
    .await;
    let message = assert_error(&reply, 401, "unauthorized");
    assert!(message.contains("audience"), "{message}");
    // A token that names no audience at all is refused by both.
    let mut bare = claims(SHOP_ISS, "x", "carol");
    bare.as_object_mut().unwrap().remove("aud");
    let bare = bearer(&hs256(&bare, SHOP_SECRET.as_bytes()));
    for host in ["north.localhost", "south.localhost"] {
        let reply = echo(&ferry, host, "echo", &[("Authorization", &bare)]).await;
        assert_error(&reply, 401, "unauthorized");
    }
}
