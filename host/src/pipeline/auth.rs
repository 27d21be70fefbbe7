//! Token verification: an application's JWT keys, loaded and checked with
//! the config before any socket opens, and the check a request's token goes
//! through before the pipeline lets it near a plugin. Also mints
//! development tokens for `ferry token`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use super::verified::VerifiedTokens;
use crate::config::JwtConfig;
use crate::core::Identity;

/// Why a token was refused; always answered as `unauthorized`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(String);

/// A key from a JWK set, with what the set says about it.
struct JwksKey {
    kid: Option<String>,
    alg: Option<Algorithm>,
    key: DecodingKey,
}

/// One application's verifier.
pub struct JwtAuth {
    /// What every token must satisfy, all algorithms listed (for messages).
    validation: Validation,
    /// The same, one per algorithm family: jsonwebtoken refuses a key whose
    /// family differs from any algorithm its validation lists, so a mixed
    /// allow-list (`[HS256, RS256]`) is checked per family.
    by_family: Vec<(AlgorithmFamily, Validation)>,
    /// Tokens verified before, until they expire.
    verified: VerifiedTokens,
    secret: Option<(DecodingKey, EncodingKey)>,
    public_key: Option<DecodingKey>,
    jwks: Vec<JwksKey>,
    tenant_claim: Option<String>,
    issuer: Option<String>,
    /// Required `aud`: the configured audience, else the application's name.
    audience: String,
}

/// The shortest HMAC secret RFC 7518 allows for `alg`: the hash's size.
fn min_secret_len(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    }
}

fn alg_list(algorithms: &[Algorithm]) -> String {
    algorithms
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl JwtAuth {
    /// Loads the keys `config` names (for application `app`) and checks that
    /// every allowed algorithm has a key and every key an allowed algorithm.
    pub fn load(app: &str, config: &JwtConfig) -> Result<JwtAuth, String> {
        let algorithms = &config.algorithms;
        let hmac_algs: Vec<Algorithm> = algorithms
            .iter()
            .copied()
            .filter(|a| a.family() == AlgorithmFamily::Hmac)
            .collect();

        let secret = match (&config.secret_env, &config.secret_file) {
            (Some(var), _) => Some(
                std::env::var(var)
                    .map_err(|_| format!("secret_env: environment variable `{var}` is not set"))?
                    .into_bytes(),
            ),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("secret_file {}: cannot read: {e}", path.display()))?
                    .trim()
                    .as_bytes()
                    .to_vec(),
            ),
            (None, None) => None,
        };
        let secret = match secret {
            Some(bytes) => {
                let Some(need) = hmac_algs.iter().map(|a| min_secret_len(*a)).max() else {
                    return Err(format!(
                        "an HMAC secret is configured but no HS algorithm is allowed (algorithms: {})",
                        alg_list(algorithms)
                    ));
                };
                if bytes.len() < need {
                    return Err(format!(
                        "the HMAC secret is {} bytes; {} needs at least {need}",
                        bytes.len(),
                        alg_list(&hmac_algs)
                    ));
                }
                Some((
                    DecodingKey::from_secret(&bytes),
                    EncodingKey::from_secret(&bytes),
                ))
            }
            None => None,
        };

        let asymmetric: Vec<AlgorithmFamily> = {
            let mut families: Vec<AlgorithmFamily> = algorithms
                .iter()
                .map(|a| a.family())
                .filter(|f| *f != AlgorithmFamily::Hmac)
                .collect();
            families.dedup();
            families
        };
        let public_key = match &config.public_key_file {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("public_key_file {}: cannot read: {e}", path.display()))?;
                let family = match asymmetric.as_slice() {
                    [family] => *family,
                    [] => {
                        return Err(format!(
                            "public_key_file is set but no public-key algorithm is allowed (algorithms: {})",
                            alg_list(algorithms)
                        ));
                    }
                    _ => {
                        return Err(format!(
                            "public_key_file holds one key, but the allowed algorithms need keys of different kinds ({}); use jwks_file for several keys",
                            alg_list(algorithms)
                        ));
                    }
                };
                let key = match family {
                    AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(&pem),
                    AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&pem),
                    AlgorithmFamily::Ed => DecodingKey::from_ed_pem(&pem),
                    AlgorithmFamily::Hmac => unreachable!("filtered out above"),
                }
                .map_err(|e| {
                    format!(
                        "public_key_file {}: not a PEM public key for {}: {e}",
                        path.display(),
                        alg_list(algorithms)
                    )
                })?;
                Some(key)
            }
            None => None,
        };

        let mut jwks = Vec::new();
        if let Some(path) = &config.jwks_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("jwks_file {}: cannot read: {e}", path.display()))?;
            let set: JwkSet = serde_json::from_str(&text)
                .map_err(|e| format!("jwks_file {}: not a JWK set: {e}", path.display()))?;
            for (i, jwk) in set.keys.iter().enumerate() {
                let what = match &jwk.common.key_id {
                    Some(kid) => format!("key `{kid}`"),
                    None => format!("key #{i}"),
                };
                // Encryption keys share JWK sets with signing keys; they
                // never verify a token.
                if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
                    continue;
                }
                let alg = match jwk.common.key_algorithm {
                    Some(
                        KeyAlgorithm::RSA1_5 | KeyAlgorithm::RSA_OAEP | KeyAlgorithm::RSA_OAEP_256,
                    ) => continue,
                    Some(alg) => Some(alg.to_string().parse::<Algorithm>().map_err(|_| {
                        format!(
                            "jwks_file {}: {what} has an unsupported `alg`",
                            path.display()
                        )
                    })?),
                    None => None,
                };
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| format!("jwks_file {}: {what}: {e}", path.display()))?;
                jwks.push(JwksKey {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    key,
                });
            }
            if jwks.is_empty() {
                return Err(format!("jwks_file {}: the set has no keys", path.display()));
            }
        }

        for alg in algorithms {
            let family = alg.family();
            let covered = match family {
                AlgorithmFamily::Hmac => secret.is_some(),
                _ => public_key.as_ref().is_some_and(|k| k.family() == family),
            } || jwks.iter().any(|k| k.key.family() == family);
            if !covered {
                return Err(format!(
                    "{alg:?} is allowed but no key of its kind is configured"
                ));
            }
        }

        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms.clone();
        validation.leeway = config.leeway_s;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        // The audience is required, and defaults to the application's name:
        // two applications that share an issuer and its keys must not take
        // each other's tokens.
        let audience = config.audience.clone().unwrap_or_else(|| app.to_owned());
        validation.set_audience(&[&audience]);
        required.push("aud");
        validation.set_required_spec_claims(&required);
        let mut by_family: Vec<(AlgorithmFamily, Validation)> = Vec::new();
        for alg in algorithms {
            match by_family.iter_mut().find(|(f, _)| *f == alg.family()) {
                Some((_, v)) => v.algorithms.push(*alg),
                None => {
                    let mut v = validation.clone();
                    v.algorithms = vec![*alg];
                    by_family.push((alg.family(), v));
                }
            }
        }

        Ok(JwtAuth {
            validation,
            by_family,
            verified: VerifiedTokens::default(),
            secret,
            public_key,
            jwks,
            tenant_claim: config.tenant_claim.clone(),
            issuer: config.issuer.clone(),
            audience,
        })
    }

    /// The accepted algorithms, for messages and status.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.validation.algorithms
    }

    /// Checks `token` and answers who it names.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if let Some(identity) = self.verified.get(token) {
            return Ok(identity);
        }
        let (identity, exp) = self.verify_afresh(token)?;
        self.verified
            .insert(token, &identity, exp.saturating_add(self.validation.leeway));
        Ok(identity)
    }

    /// Checks every part of `token`; answers who it names and its `exp`.
    fn verify_afresh(&self, token: &str) -> Result<(Identity, u64), AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError(format!("malformed token: {}", describe(e.kind()))))?;
        if !self.validation.algorithms.contains(&header.alg) {
            return Err(AuthError(format!(
                "token algorithm {:?} is not accepted here (accepted: {})",
                header.alg,
                alg_list(&self.validation.algorithms)
            )));
        }
        let key = self.key_for(header.alg, header.kid.as_deref())?;
        let validation = self
            .by_family
            .iter()
            .find(|(family, _)| *family == header.alg.family())
            .map(|(_, v)| v)
            .expect("an accepted algorithm has its family's validation");
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
            .map_err(|e| AuthError(format!("token refused: {}", describe(e.kind()))))?;
        let claims = data.claims;
        let string_claim = |name: &str| -> Result<Option<String>, AuthError> {
            match claims.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(AuthError(format!(
                    "token refused: claim `{name}` is not a string"
                ))),
            }
        };
        let subject = string_claim("sub")?;
        let tenant = match &self.tenant_claim {
            Some(name) => string_claim(name)?,
            None => None,
        };
        // `exp` is required and was checked as a number by the validation.
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        let identity = Identity {
            subject,
            tenant,
            claims: Value::Object(claims).to_string(),
        };
        Ok((identity, exp))
    }

    /// The key for a token signed with `alg`: by `kid` from the JWK set,
    /// else the configured key of that algorithm's kind. A key of another
    /// kind is never tried, which is what defeats algorithm confusion.
    fn key_for(&self, alg: Algorithm, kid: Option<&str>) -> Result<&DecodingKey, AuthError> {
        let family = alg.family();
        let fits = |k: &&JwksKey| k.key.family() == family && k.alg.is_none_or(|a| a == alg);
        if let Some(kid) = kid
            && !self.jwks.is_empty()
        {
            // A `kid` picks one key of the set, or none: it never falls back
            // to another key.
            return match self.jwks.iter().find(|k| k.kid.as_deref() == Some(kid)) {
                Some(found) if fits(&found) => Ok(&found.key),
                Some(_) => Err(AuthError(format!(
                    "token refused: key `{kid}` is not a {alg:?} key"
                ))),
                None => Err(AuthError(format!("token refused: unknown key id `{kid}`"))),
            };
        }
        let configured = match family {
            AlgorithmFamily::Hmac => self.secret.as_ref().map(|(d, _)| d),
            _ => self.public_key.as_ref().filter(|k| k.family() == family),
        };
        if let Some(key) = configured {
            return Ok(key);
        }
        let mut candidates = self.jwks.iter().filter(fits);
        match (candidates.next(), candidates.next(), kid) {
            (Some(only), None, None) => Ok(&only.key),
            (_, _, Some(kid)) => Err(AuthError(format!("token refused: unknown key id `{kid}`"))),
            _ => Err(AuthError(format!(
                "token refused: no {alg:?} key matches (the token names no `kid`)"
            ))),
        }
    }

    /// Whether this application can mint tokens: it has an HMAC secret.
    pub fn can_mint(&self) -> Result<Algorithm, String> {
        let alg = self
            .validation
            .algorithms
            .iter()
            .copied()
            .find(|a| a.family() == AlgorithmFamily::Hmac);
        match (alg, &self.secret) {
            (Some(alg), Some(_)) => Ok(alg),
            _ => Err(format!(
                "it verifies tokens with public keys only ({}); tokens must be signed by the issuer that holds the private key",
                alg_list(&self.validation.algorithms)
            )),
        }
    }

    /// A development token for `subject`, signed with the HMAC secret.
    pub fn mint(
        &self,
        subject: &str,
        tenant: Option<&str>,
        ttl: Duration,
    ) -> Result<String, String> {
        let alg = self.can_mint()?;
        let (_, key) = self.secret.as_ref().expect("can_mint checked the secret");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("the clock is after 1970")
            .as_secs();
        let mut claims = Map::new();
        claims.insert("sub".into(), subject.into());
        claims.insert("iat".into(), now.into());
        claims.insert("nbf".into(), now.into());
        claims.insert("exp".into(), (now + ttl.as_secs()).into());
        if let Some(issuer) = &self.issuer {
            claims.insert("iss".into(), issuer.as_str().into());
        }
        claims.insert("aud".into(), self.audience.as_str().into());
        if let Some(tenant) = tenant {
            let Some(claim) = &self.tenant_claim else {
                return Err("--tenant was given, but the application sets no tenant_claim".into());
            };
            claims.insert(claim.clone(), tenant.into());
        }
        jsonwebtoken::encode(&Header::new(alg), &claims, key).map_err(|e| e.to_string())
    }
}

/// A short reason for a refused token. It names the failed check, never a
/// key or a claim's expected value.
fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::InvalidToken => "not a JWT (three base64url parts separated by dots)".into(),
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::ExpiredSignature => "expired (`exp` is in the past)".into(),
        ErrorKind::ImmatureSignature => "not valid yet (`nbf` is in the future)".into(),
        ErrorKind::InvalidIssuer => "wrong issuer (`iss`)".into(),
        ErrorKind::InvalidAudience => "wrong audience (`aud`)".into(),
        ErrorKind::InvalidAlgorithm => "the algorithm does not match the key".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the `{claim}` claim is missing"),
        ErrorKind::InvalidClaimFormat(claim) => format!("the `{claim}` claim is malformed"),
        ErrorKind::Base64(_) => "a part is not base64url".into(),
        ErrorKind::Json(_) => {
            "the header or claims are not valid JSON, or the header names an unknown algorithm such as `none`".into()
        }
        ErrorKind::Utf8(_) => "a part is not UTF-8".into(),
        other => format!("{other:?}"),
    }
}
