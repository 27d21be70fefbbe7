//! `apps.NAME.auth`: `none`, or where the JWT keys come from and what a
//! token must say.

use std::path::PathBuf;

use serde::Deserialize;

/// `auth: none`, or `auth: {jwt: {...}}`.
#[derive(Debug, Clone)]
pub enum AuthConfig {
    /// Every action is public; tokens are not checked.
    None,
    Jwt(JwtConfig),
}

// YAML for serde writes enum variants as `!tags`; the config reads better as a
// plain word or a one-key map, so this is spelled out by hand.
impl<'de> Deserialize<'de> for AuthConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct AuthMap {
            jwt: JwtConfig,
        }
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = AuthConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`none`, or a map with `jwt`")
            }
            fn visit_str<E: serde::de::Error>(self, word: &str) -> Result<AuthConfig, E> {
                match word {
                    "none" => Ok(AuthConfig::None),
                    other => Err(E::custom(format!(
                        "`{other}` is not an auth setting: write `none`, or a map with `jwt`"
                    ))),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<AuthConfig, A::Error> {
                AuthMap::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|m| AuthConfig::Jwt(m.jwt))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Where an application's JWT keys come from and what a token must say.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Accepted `alg` values; a token's header can only pick among these.
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Environment variable holding the HMAC secret (HS256/384/512).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding the HMAC secret; surrounding whitespace is ignored.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// PEM public key (RS*/PS*, ES256/384 or EdDSA).
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// A JWK set; the token's `kid` picks the key.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Required `iss`.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Required `aud`; without it, the application's name.
    #[serde(default)]
    pub audience: Option<String>,
    /// The claim that names the tenant.
    #[serde(default)]
    pub tenant_claim: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_s: u64,
}

fn default_leeway() -> u64 {
    30
}

impl JwtConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.algorithms.is_empty() {
            return Err("algorithms must list at least one algorithm".into());
        }
        if self.secret_env.is_some() && self.secret_file.is_some() {
            return Err("give the HMAC secret once: secret_env or secret_file, not both".into());
        }
        if self.public_key_file.is_none()
            && self.jwks_file.is_none()
            && self.secret_env.is_none()
            && self.secret_file.is_none()
        {
            return Err("no key: set secret_env, secret_file, public_key_file or jwks_file".into());
        }
        if self.leeway_s > 300 {
            return Err(format!(
                "leeway_s must be at most 300 seconds, not {}",
                self.leeway_s
            ));
        }
        if self.tenant_claim.as_deref() == Some("") {
            return Err("tenant_claim must not be empty".into());
        }
        Ok(())
    }
}
