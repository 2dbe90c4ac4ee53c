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

use std::future::Future;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use zeroize::Zeroizing;

use super::token::{Refused, Token};
use crate::providers::{Files, ProviderError};
use ferry_api::checks::oauth2_keys;
use ferry_api::confinement::SecretUse;

/// The annotation that claims a Secret's refresh token for one replica.
pub const CLAIM_ANNOTATION: &str = "ferry.dev/refresh-token-claim";

/// How long a claim holds: longer than one token request may take
/// ([`super::upstream::REQUEST_TIMEOUT`]) with the writes around it.
pub const CLAIM_LIFETIME: i64 = 30;

/// How long a spend waits for another replica's claim to end.
const MAX_WAIT: Duration = Duration::from_secs(20);

/// How often a waiting spend looks again.
const POLL: Duration = Duration::from_millis(200);

/// How long one apiserver call may take.
const API_TIMEOUT: Duration = Duration::from_secs(5);

/// Spends refresh tokens held in Secrets, one replica at a time.
pub struct Custody {
    client: kube::Client,
    holder: String,
}

impl Custody {
    /// Custody for this replica, named `holder` in claims (its pod name).
    pub fn new(client: kube::Client, holder: &str) -> Self {
        Self {
            client,
            holder: holder.to_owned(),
        }
    }

    /// Claims the refresh token of Secret `namespace/name`, hands it and
    /// the Secret's data to `spend`, stores the rotated token the server
    /// returns, and releases the claim. `now` gives Unix seconds.
    pub async fn spend<F, Fut>(
        &self,
        namespace: &str,
        name: &str,
        now: impl Fn() -> i64,
        spend: F,
    ) -> Result<Token, Refused>
    where
        F: FnOnce(Zeroizing<Vec<u8>>, Files) -> Fut,
        Fut: Future<Output = Result<Token, Refused>>,
    {
        let api = Api::<Secret>::namespaced(self.client.clone(), namespace);
        let claimed = self.claim(&api, namespace, name, &now).await?;
        let mut data: Files = claimed
            .data
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| (key, Zeroizing::new(value.0)))
            .collect();
        let Some(refresh_token) = data.remove(oauth2_keys::REFRESH_TOKEN) else {
            self.release(&api, claimed, None).await;
            return Err(Refused::Request(ProviderError::NotFound(format!(
                "Secret {namespace}/{name} has no key {:?}",
                oauth2_keys::REFRESH_TOKEN
            ))));
        };
        let spent = spend(refresh_token, data).await;
        let rotated = spent
            .as_ref()
            .ok()
            .and_then(|token| token.refresh_token.clone());
        if !self.release(&api, claimed, rotated).await {
            tracing::error!(
                secret = %format!("{namespace}/{name}"),
                "the rotated refresh token could not be stored: the server has \
                 invalidated the one in the Secret; run `ferry-operator oauth2-consent` again"
            );
        }
        spent
    }

    /// Waits for no other claim and writes ours; returns the Secret as
    /// written (its resourceVersion is ours).
    async fn claim(
        &self,
        api: &Api<Secret>,
        namespace: &str,
        name: &str,
        now: &impl Fn() -> i64,
    ) -> Result<Secret, Refused> {
        let deadline = tokio::time::Instant::now() + MAX_WAIT;
        loop {
            let mut secret = read(api, namespace, name).await?;
            let held_by_another = claim_of(&secret)
                .is_some_and(|(holder, until)| holder != self.holder && until > now());
            if !held_by_another {
                secret.metadata.annotations.get_or_insert_default().insert(
                    CLAIM_ANNOTATION.to_owned(),
                    format!("{} {}", self.holder, now() + CLAIM_LIFETIME),
                );
                match write(api, name, &secret).await {
                    Ok(written) => return Ok(written),
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

    /// Drops our claim, storing `rotated` as the refresh token when the
    /// server sent one. Retries on conflicts (someone relabelled the
    /// Secret) as long as the claim is still ours. False if `rotated`
    /// could not be stored.
    async fn release(
        &self,
        api: &Api<Secret>,
        mut secret: Secret,
        rotated: Option<Zeroizing<String>>,
    ) -> bool {
        let name = secret.metadata.name.clone().unwrap_or_default();
        for _ in 0..5 {
            if let Some(annotations) = secret.metadata.annotations.as_mut() {
                annotations.remove(CLAIM_ANNOTATION);
            }
            if let Some(token) = &rotated {
                secret.data.get_or_insert_default().insert(
                    oauth2_keys::REFRESH_TOKEN.to_owned(),
                    ByteString(token.as_bytes().to_vec()),
                );
            }
            match write(api, &name, &secret).await {
                Ok(_) => return true,
                Err(WriteError::Conflict) => {
                    let Ok(Some(current)) = api.get_opt(&name).await else {
                        return rotated.is_none();
                    };
                    let ours = claim_of(&current).is_some_and(|(holder, _)| holder == self.holder);
                    if !ours {
                        return rotated.is_none();
                    }
                    secret = current;
                }
                Err(WriteError::Failed(_)) => return rotated.is_none(),
            }
        }
        rotated.is_none()
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
    ferry_api::confinement::brokerable_for(
        SecretUse::Read,
        namespace,
        name,
        secret.type_.as_deref(),
        secret
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(ferry_contract::BROKERABLE_LABEL))
            .map(String::as_str),
    )
    .map_err(|refusal| Refused::Request(ProviderError::Refused(refusal.message)))?;
    Ok(secret)
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
