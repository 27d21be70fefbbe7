//! Token checking on any input. Raw bytes as a token are always refused,
//! without a panic. Tokens built from any header and claims and signed with
//! the application's real secret (so the fuzzer gets past the signature)
//! are accepted only when they say what the host demands: `alg` HS256,
//! `aud` the application's name, an `exp` not past, a string `sub`.
#![no_main]

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ferry_fuzz::config::JwtConfig;
use ferry_fuzz::pipeline::auth::JwtAuth;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const SECRET: &[u8] = b"a fuzzing secret of at least thirty-two bytes";

fn auth() -> &'static JwtAuth {
    static AUTH: OnceLock<JwtAuth> = OnceLock::new();
    AUTH.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("ferry-fuzz-secret-{}", std::process::id()));
        std::fs::write(&path, SECRET).unwrap();
        let config: JwtConfig = serde_norway::from_str(&format!(
            "algorithms: [HS256]\nsecret_file: {}\ntenant_claim: tenant\n",
            path.display()
        ))
        .unwrap();
        let auth = JwtAuth::load("shop", &config).unwrap();
        let _ = std::fs::remove_file(path);
        auth
    })
}

fuzz_target!(|data: &[u8]| {
    let auth = auth();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let token = String::from_utf8_lossy(rest);
        assert!(
            auth.verify(&token).is_err(),
            "an unsigned token passed: {token:?}"
        );
        return;
    }
    let split = rest.iter().position(|&b| b == 0xff).unwrap_or(rest.len());
    let (header, claims) = (&rest[..split], rest.get(split + 1..).unwrap_or_default());
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET),
        Algorithm::HS256,
    )
    .unwrap();
    let token = format!("{message}.{signature}");
    let Ok(identity) = auth.verify(&token) else {
        return;
    };
    let header: Value = serde_json::from_slice(header).expect("accepted a header that is not JSON");
    assert_eq!(header["alg"], "HS256", "{header}");
    let claims: Value = serde_json::from_slice(claims).expect("accepted claims that are not JSON");
    let aud_ok = match &claims["aud"] {
        Value::String(aud) => aud == "shop",
        Value::Array(auds) => auds.iter().any(|a| a == "shop"),
        _ => false,
    };
    assert!(aud_ok, "accepted audience {}", claims["aud"]);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = claims["exp"]
        .as_f64()
        .expect("accepted a token without a numeric exp");
    assert!(
        exp + 30.0 >= now as f64,
        "accepted an expired token: exp {exp}"
    );
    assert_eq!(identity.subject.as_deref(), claims["sub"].as_str());
});
