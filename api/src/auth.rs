//! Bearer tokens: JWTs the service signs (HS256) whose subject is the calling user.
//!
//! Several keys are accepted at once, each named by its `kid`, so keys rotate without a
//! flag day: add the new key first in the list (it signs from then on), keep the old
//! one until the tokens it signed have expired, then drop it.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use feedstream_core::ids::UserId;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The `iss` of every token: a token of another service is not one of ours.
pub const ISSUER: &str = "feedstream";
/// Shortest secret accepted: RFC 7518 §3.2 asks for a key as long as the hash (256 bits).
pub const MIN_SECRET_BYTES: usize = 32;
/// Clock skew tolerated between the instance that minted a token and the one checking it.
const LEEWAY_SECONDS: u64 = 30;
const ALGORITHM: Algorithm = Algorithm::HS256;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iss: String,
    iat: u64,
    exp: u64,
}

/// The keys tokens are signed and checked with. The first key of the list signs.
#[derive(Clone)]
pub struct TokenKeys {
    signing_kid: String,
    signing: EncodingKey,
    verifying: HashMap<String, DecodingKey>,
    validation: Validation,
}

/// Token keys that cannot be used: a configuration error, never retriable.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("no token keys given: give at least one `kid:secret`")]
    Empty,
    #[error("token key `{0}` is not `kid:secret`")]
    Malformed(String),
    #[error("token key `{kid}`: the secret has {bytes} bytes, at least {MIN_SECRET_BYTES} are needed (e.g. `openssl rand -base64 32`)")]
    ShortSecret { kid: String, bytes: usize },
    #[error("token key id `{0}` is given twice")]
    DuplicateKid(String),
}

impl KeysError {
    /// Whether trying again could help: never, the configuration must change.
    pub fn is_retriable(&self) -> bool {
        false
    }
}

/// Why a request's token was refused; each is a 401 with a `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error("no bearer token: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("the token has expired")]
    Expired,
    #[error("the token is signed by an unknown key `{0}`")]
    UnknownKey(String),
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token's claims are not valid: {0}")]
    InvalidClaims(String),
}

impl TokenRejection {
    /// Whether the same request may succeed later: only with another token.
    pub fn is_retriable(&self) -> bool {
        false
    }

    /// The label of the rejections metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed(_) => "malformed",
            Self::Expired => "expired",
            Self::UnknownKey(_) => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::InvalidClaims(_) => "invalid_claims",
        }
    }

    /// The RFC 6750 §3.1 error code of the challenge.
    pub fn error_code(&self) -> &'static str {
        match self {
            Self::Missing => "invalid_request",
            _ => "invalid_token",
        }
    }
}

/// A token that could not be minted.
#[derive(Debug, thiserror::Error)]
#[error("the token could not be signed: {0}")]
pub struct MintError(#[from] jsonwebtoken::errors::Error);

impl TokenKeys {
    /// Keys from `kid:secret` entries separated by commas or new lines; blank lines and
    /// lines starting with `#` are skipped, so a key file can carry comments.
    pub fn parse(spec: &str) -> Result<Self, KeysError> {
        let mut keys: Vec<(String, String)> = Vec::new();
        for entry in spec
            .split(['\n', ','])
            .map(str::trim)
            .filter(|entry| !entry.is_empty() && !entry.starts_with('#'))
        {
            let (kid, secret) = entry
                .split_once(':')
                .filter(|(kid, _)| !kid.trim().is_empty())
                .ok_or_else(|| KeysError::Malformed(redacted(entry)))?;
            let (kid, secret) = (kid.trim().to_string(), secret.trim().to_string());
            if secret.len() < MIN_SECRET_BYTES {
                return Err(KeysError::ShortSecret {
                    kid,
                    bytes: secret.len(),
                });
            }
            if keys.iter().any(|(known, _)| *known == kid) {
                return Err(KeysError::DuplicateKid(kid));
            }
            keys.push((kid, secret));
        }
        let (signing_kid, signing_secret) = keys.first().cloned().ok_or(KeysError::Empty)?;
        let mut validation = Validation::new(ALGORITHM);
        validation.leeway = LEEWAY_SECONDS;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        Ok(Self {
            signing_kid,
            signing: EncodingKey::from_secret(signing_secret.as_bytes()),
            verifying: keys
                .iter()
                .map(|(kid, secret)| (kid.clone(), DecodingKey::from_secret(secret.as_bytes())))
                .collect(),
            validation,
        })
    }

    /// A token for `user`, issued at `issued_at`, valid for `ttl`.
    pub fn mint(
        &self,
        user: UserId,
        issued_at: SystemTime,
        ttl: Duration,
    ) -> Result<String, MintError> {
        let iat = issued_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            sub: user.to_string(),
            iss: ISSUER.to_string(),
            iat,
            exp: iat.saturating_add(ttl.as_secs()),
        };
        let mut header = Header::new(ALGORITHM);
        header.kid = Some(self.signing_kid.clone());
        Ok(jsonwebtoken::encode(&header, &claims, &self.signing)?)
    }

    /// The user a token speaks for, if one of our keys signed it and it is still valid.
    pub fn verify(&self, token: &str) -> Result<UserId, TokenRejection> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|error| TokenRejection::Malformed(error.to_string()))?;
        let kid = header
            .kid
            .ok_or_else(|| TokenRejection::Malformed("the header names no key (`kid`)".into()))?;
        let key = self
            .verifying
            .get(&kid)
            .ok_or(TokenRejection::UnknownKey(kid))?;
        let claims = jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => TokenRejection::Expired,
                ErrorKind::InvalidSignature => TokenRejection::BadSignature,
                ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Json(_) => {
                    TokenRejection::Malformed(error.to_string())
                }
                _ => TokenRejection::InvalidClaims(error.to_string()),
            })?
            .claims;
        claims
            .sub
            .parse::<UserId>()
            .map_err(|error| TokenRejection::InvalidClaims(format!("sub: {error}")))
    }
}

/// An entry for an error message, without its secret.
fn redacted(entry: &str) -> String {
    match entry.split_once(':') {
        Some((kid, _)) => format!("{kid}:…"),
        None => format!("{}…", entry.chars().take(8).collect::<String>()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "old:0123456789abcdef0123456789abcdef";
    const NEW: &str = "new:fedcba9876543210fedcba9876543210";

    fn user(id: u64) -> UserId {
        UserId::new(id).expect("a valid id")
    }

    fn keys(spec: &str) -> TokenKeys {
        TokenKeys::parse(spec).expect("valid keys")
    }

    fn hour() -> Duration {
        Duration::from_secs(3600)
    }

    #[test]
    fn a_minted_token_speaks_for_its_user() {
        let keys = keys(NEW);
        let token = keys
            .mint(user(42), SystemTime::now(), hour())
            .expect("minted");
        assert_eq!(keys.verify(&token), Ok(user(42)));
    }

    #[test]
    fn after_a_rotation_tokens_of_the_old_key_still_verify_and_the_new_key_signs() {
        let before = keys(OLD);
        let old_token = before
            .mint(user(7), SystemTime::now(), hour())
            .expect("minted");
        let rotated = keys(&format!("{NEW}\n# kept until its tokens expire\n{OLD}"));
        assert_eq!(rotated.verify(&old_token), Ok(user(7)));
        let new_token = rotated
            .mint(user(7), SystemTime::now(), hour())
            .expect("minted");
        assert_eq!(
            before.verify(&new_token),
            Err(TokenRejection::UnknownKey("new".into()))
        );
        let header = jsonwebtoken::decode_header(&new_token).expect("a header");
        assert_eq!(header.kid.as_deref(), Some("new"));
    }

    #[test]
    fn an_expired_token_is_refused_beyond_the_leeway_only() {
        let keys = keys(NEW);
        let issued = SystemTime::now() - Duration::from_secs(3600 + LEEWAY_SECONDS / 2);
        let within = keys.mint(user(1), issued, hour()).expect("minted");
        assert_eq!(keys.verify(&within), Ok(user(1)));
        let issued = SystemTime::now() - Duration::from_secs(3600 + LEEWAY_SECONDS * 2);
        let expired = keys.mint(user(1), issued, hour()).expect("minted");
        assert_eq!(keys.verify(&expired), Err(TokenRejection::Expired));
    }

    #[test]
    fn a_token_signed_with_another_secret_under_our_kid_is_forged() {
        let forger = keys("new:this-is-not-the-service-secret-at-all");
        let forged = forger
            .mint(user(1), SystemTime::now(), hour())
            .expect("minted");
        assert_eq!(keys(NEW).verify(&forged), Err(TokenRejection::BadSignature));
    }

    #[test]
    fn garbage_and_tampered_tokens_are_refused() {
        let keys = keys(NEW);
        assert!(matches!(
            keys.verify("not-a-jwt"),
            Err(TokenRejection::Malformed(_))
        ));
        let token = keys
            .mint(user(1), SystemTime::now(), hour())
            .expect("minted");
        let mut parts: Vec<&str> = token.split('.').collect();
        let other = keys
            .mint(user(2), SystemTime::now(), hour())
            .expect("minted");
        let other_claims = other.split('.').nth(1).expect("claims");
        parts[1] = other_claims;
        assert_eq!(
            keys.verify(&parts.join(".")),
            Err(TokenRejection::BadSignature)
        );
    }

    #[test]
    fn bad_key_specs_say_what_is_wrong_without_the_secret() {
        assert!(matches!(
            TokenKeys::parse(" \n# nothing\n"),
            Err(KeysError::Empty)
        ));
        assert!(matches!(
            TokenKeys::parse("k:short"),
            Err(KeysError::ShortSecret { bytes: 5, .. })
        ));
        assert!(matches!(
            TokenKeys::parse(&format!("{NEW},{NEW}")),
            Err(KeysError::DuplicateKid(kid)) if kid == "new"
        ));
        let error = TokenKeys::parse("a-secret-without-any-kid-0123456789")
            .err()
            .expect("refused");
        assert!(!error.to_string().contains("0123456789"), "{error}");
    }
}
