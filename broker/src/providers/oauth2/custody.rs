//! Refresh tokens in the broker's custody. A `refreshToken` source's
//! credentials Secret holds a refresh token a person consented to once;
//! servers that rotate refresh tokens (OAuth 2.1, Hydra) hand out a new one
//! at each use and treat a second use of the old one as theft, revoking
//! the whole chain. So of all broker replicas exactly one may spend the
//! token at a time, and the rotated token must reach the Secret before
//! anyone spends again.
//!
//! The Secret itself is the lock. A replica claims it by writing the
//! annotation [`CLAIM_ANNOTATION`] (`<holder> <until>`) under the
//! resourceVersion it read: of replicas racing, the apiserver lets one
//! write win and the others get a conflict, re-read, see the claim and
//! wait. The winner spends the token, then writes the rotated one and
//! drops the claim in one update under the version its claim created, so
//! a token is never spent twice and a rotated one never lost. A claim
//! ends by itself at `<until>`, so a replica that dies holding one stalls
//! the others for at most [`CLAIM_LIFETIME`].
//!
//! Such servers also keep one access token per refresh token: a refresh
//! revokes the access token the previous one made (Hydra does, even with
//! a rotation grace period). So the replicas share the current access
//! token too, or each one's refresh would cut off the pods another served:
//! the winner stores it next to the refresh token, under the key
//! [`CURRENT_TOKEN_KEY`], sealed with the lease key (see [`crate::seal`]);
//! a replica that finds it there, fresh enough, uses it without spending.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use zeroize::Zeroizing;

use super::token::{Refused, Token};
use crate::providers::secret_reader::{files_of, opted_in};
use crate::providers::{Files, ProviderError};
use crate::seal::Seal;
use ferry_api::checks::oauth2_keys;
use ferry_api::confinement::SecretUse;

/// The key of the credentials Secret holding the current access token,
/// sealed, with its type, scope and lifetime (JSON).
pub const CURRENT_TOKEN_KEY: &str = ferry_contract::CURRENT_ACCESS_TOKEN_KEY;

/// The annotation that claims a Secret's refresh token for one replica.
pub const CLAIM_ANNOTATION: &str = ferry_contract::REFRESH_TOKEN_CLAIM_ANNOTATION;

/// How long a claim holds: longer than one token request may take
/// ([`super::upstream::REQUEST_TIMEOUT`]) with the writes around it.
pub const CLAIM_LIFETIME: i64 = 30;

/// How long a spend waits for another replica's claim to end.
const MAX_WAIT: Duration = Duration::from_secs(20);

/// How often a waiting spend looks again.
const POLL: Duration = Duration::from_millis(200);

/// How long one apiserver call may take.
const API_TIMEOUT: Duration = Duration::from_secs(5);

/// The current access token as stored in the Secret.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Stored {
    sealed: String,
    token_type: String,
    issued_at: i64,
    expires_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

/// Spends refresh tokens held in Secrets, one replica at a time, and
/// shares the access token each spend makes.
pub struct Custody {
    client: kube::Client,
    holder: String,
    seal: Seal,
}

impl Custody {
    /// Custody for this replica, named `holder` in claims (its pod name),
    /// sealing the shared access token with `seal`.
    pub fn new(client: kube::Client, holder: &str, seal: Seal) -> Self {
        Self {
            client,
            holder: holder.to_owned(),
            seal,
        }
    }

    /// The access token of Secret `namespace/name`: the one stored there
    /// when `fresh` says it still is, else a new one: claims the refresh
    /// token, hands it and the Secret's data to `spend`, stores the rotated
    /// refresh token and the new access token, and releases the claim.
    /// `now` gives Unix seconds.
    pub async fn current_or_spend<F, Fut>(
        &self,
        namespace: &str,
        name: &str,
        now: impl Fn() -> i64,
        fresh: impl Fn(&Token) -> bool,
        spend: F,
    ) -> Result<Token, Refused>
    where
        F: FnOnce(Zeroizing<Vec<u8>>, Files) -> Fut,
        Fut: Future<Output = Result<Token, Refused>>,
    {
        let api = Api::<Secret>::namespaced(self.client.clone(), namespace);
        let claimed = match self.claim(&api, namespace, name, &now, &fresh).await? {
            Claimed::Current(token) => return Ok(token),
            Claimed::Spend(secret) => *secret,
        };
        let mut data = files_of(claimed.data.clone());
        let Some(refresh_token) = data.remove(oauth2_keys::REFRESH_TOKEN) else {
            self.release(&api, claimed, None, None).await;
            return Err(Refused::Request(ProviderError::NotFound(format!(
                "Secret {namespace}/{name} has no key {:?}",
                oauth2_keys::REFRESH_TOKEN
            ))));
        };
        data.remove(CURRENT_TOKEN_KEY);
        let spent = spend(refresh_token, data).await;
        let rotated = spent
            .as_ref()
            .ok()
            .and_then(|token| token.refresh_token.clone());
        let current = spent.as_ref().ok().and_then(|token| self.stored(token));
        if !self.release(&api, claimed, rotated.clone(), current).await && rotated.is_some() {
            tracing::error!(
                secret = %format!("{namespace}/{name}"),
                "the rotated refresh token could not be stored: the server has \
                 invalidated the one in the Secret; run `ferry-operator oauth2-consent` again"
            );
        }
        spent
    }

    /// The stored access token when `fresh`; else waits for no other
    /// claim and writes ours, and returns the Secret as written (its
    /// resourceVersion is ours).
    async fn claim(
        &self,
        api: &Api<Secret>,
        namespace: &str,
        name: &str,
        now: &impl Fn() -> i64,
        fresh: &impl Fn(&Token) -> bool,
    ) -> Result<Claimed, Refused> {
        let deadline = tokio::time::Instant::now() + MAX_WAIT;
        loop {
            let mut secret = read(api, namespace, name).await?;
            if let Some(token) = self.current(&secret).filter(|token| fresh(token)) {
                return Ok(Claimed::Current(token));
            }
            let held_by_another = claim_of(&secret)
                .is_some_and(|(holder, until)| holder != self.holder && until > now());
            if !held_by_another {
                secret.metadata.annotations.get_or_insert_default().insert(
                    CLAIM_ANNOTATION.to_owned(),
                    format!("{} {}", self.holder, now() + CLAIM_LIFETIME),
                );
                match write(api, name, &secret).await {
                    Ok(written) => return Ok(Claimed::Spend(Box::new(written))),
                    // Another replica wrote first: look again.
                    Err(WriteError::Conflict) => {}
                    Err(WriteError::Failed(error)) => {
                        return Err(unavailable(format!(
                            "claiming the refresh token of Secret {namespace}/{name}: {error}"
                        )));
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(unavailable(format!(
                    "the refresh token of Secret {namespace}/{name} stayed claimed by another \
                     broker replica for {MAX_WAIT:?}"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The access token stored in `secret`, if one opens.
    fn current(&self, secret: &Secret) -> Option<Token> {
        let stored = secret.data.as_ref()?.get(CURRENT_TOKEN_KEY)?;
        let stored: Stored = serde_json::from_slice(&stored.0).ok()?;
        let opened = self.seal.open(&stored.sealed).ok()?;
        let access_token = Zeroizing::new(String::from_utf8(opened.to_vec()).ok()?);
        Some(Token {
            access_token,
            token_type: stored.token_type,
            issued_at: stored.issued_at,
            expires_at: stored.expires_at,
            scope: stored.scope,
            refresh_token: None,
        })
    }

    /// `token` as stored, sealed.
    fn stored(&self, token: &Token) -> Option<Vec<u8>> {
        let sealed = self.seal.seal(token.access_token.as_bytes()).ok()?;
        serde_json::to_vec(&Stored {
            sealed,
            token_type: token.token_type.clone(),
            issued_at: token.issued_at,
            expires_at: token.expires_at,
            scope: token.scope.clone(),
        })
        .ok()
    }

    /// Drops our claim, storing `rotated` as the refresh token when the
    /// server sent one, and `current` as the shared access token (none:
    /// the stored one, spent, is removed). Retries on conflicts (someone
    /// relabelled the Secret) as long as the claim is still ours. False if
    /// nothing could be stored.
    async fn release(
        &self,
        api: &Api<Secret>,
        mut secret: Secret,
        rotated: Option<Zeroizing<String>>,
        current: Option<Vec<u8>>,
    ) -> bool {
        let name = secret.metadata.name.clone().unwrap_or_default();
        for _ in 0..5 {
            if let Some(annotations) = secret.metadata.annotations.as_mut() {
                annotations.remove(CLAIM_ANNOTATION);
            }
            let data = secret.data.get_or_insert_default();
            if let Some(token) = &rotated {
                data.insert(
                    oauth2_keys::REFRESH_TOKEN.to_owned(),
                    ByteString(token.as_bytes().to_vec()),
                );
            }
            match &current {
                Some(stored) => {
                    data.insert(CURRENT_TOKEN_KEY.to_owned(), ByteString(stored.clone()))
                }
                None => data.remove(CURRENT_TOKEN_KEY),
            };
            match write(api, &name, &secret).await {
                Ok(_) => return true,
                Err(WriteError::Conflict) => {
                    let Ok(Some(fresh)) = api.get_opt(&name).await else {
                        return false;
                    };
                    let ours = claim_of(&fresh).is_some_and(|(holder, _)| holder == self.holder);
                    if !ours {
                        return false;
                    }
                    secret = fresh;
                }
                Err(WriteError::Failed(_)) => return false,
            }
        }
        false
    }
}

/// `(holder, until)` of the Secret's claim, if it carries one.
fn claim_of(secret: &Secret) -> Option<(&str, i64)> {
    let value = secret
        .metadata
        .annotations
        .as_ref()?
        .get(CLAIM_ANNOTATION)?;
    let (holder, until) = value.rsplit_once(' ')?;
    Some((holder, until.parse().ok()?))
}

async fn read(api: &Api<Secret>, namespace: &str, name: &str) -> Result<Secret, Refused> {
    let secret = tokio::time::timeout(API_TIMEOUT, api.get_opt(name))
        .await
        .map_err(|_| {
            unavailable(format!(
                "reading Secret {namespace}/{name} took over {API_TIMEOUT:?}"
            ))
        })?
        .map_err(|error| unavailable(format!("reading Secret {namespace}/{name}: {error}")))?
        .ok_or_else(|| {
            Refused::Request(ProviderError::NotFound(format!(
                "Secret {namespace}/{name} not found"
            )))
        })?;
    opted_in(SecretUse::Read, namespace, name, &secret).map_err(Refused::Request)?;
    Ok(secret)
}

/// What a claim found.
enum Claimed {
    /// A fresh access token another spend stored.
    Current(Token),
    /// Nothing fresh: the Secret, claimed by us.
    Spend(Box<Secret>),
}

enum WriteError {
    Conflict,
    Failed(String),
}

/// Replaces the Secret under the resourceVersion it carries.
async fn write(api: &Api<Secret>, name: &str, secret: &Secret) -> Result<Secret, WriteError> {
    match tokio::time::timeout(
        API_TIMEOUT,
        api.replace(name, &PostParams::default(), secret),
    )
    .await
    {
        Err(_) => Err(WriteError::Failed(format!(
            "no answer within {API_TIMEOUT:?}"
        ))),
        Ok(Ok(written)) => Ok(written),
        Ok(Err(kube::Error::Api(status))) if status.code == 409 => Err(WriteError::Conflict),
        Ok(Err(error)) => Err(WriteError::Failed(error.to_string())),
    }
}

fn unavailable(message: String) -> Refused {
    Refused::Unavailable {
        error: ProviderError::Unavailable(message),
        retry_after: None,
    }
}
