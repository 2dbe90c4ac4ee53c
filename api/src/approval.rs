//! Just-in-time access: how an AccessRequest stands against its
//! AccessPolicy at a given time, as a pure function ([`judge_request`]),
//! and the access an approved request gives ([`approved_access`]).
//!
//! The life of a request:
//!
//! ```text
//! (new) ─valid─▶ Pending ─approved─▶ Approved ─validUntil passed─▶ Ended
//!   │              │ └─denied─▶ Denied                    (or the policy stops allowing it)
//!   └─invalid─▶ Invalid  └─expiresAt passed─▶ Expired
//! ```
//!
//! Who decided is checked by the apiserver (an admission policy over the
//! authenticated user, see `ferry_operator::admission::access_requests`);
//! this judge re-checks what it can (never the requester, a named user
//! when no group may approve) so a cluster without that policy still
//! refuses self-approval. Access starts when the operator first sees the
//! approval, so `validUntil` is exactly that moment plus the duration.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::duration::parse_duration;
use crate::grants::ApprovedAccess;
use crate::resources::{
    AccessPolicy, AccessRequest, AccessRequestStatus, Approval, RequestPhase, Verdict,
};

/// How long after `expiresAt` a decision the operator sees still counts:
/// the admission policy admits decisions only while the request is
/// Pending, and the operator marks it Expired about a second after
/// `expiresAt`. A decision seen later than this was written while the
/// operator was away, and is not honoured.
pub const DECISION_GRACE: Duration = Duration::from_secs(30);

/// Where a request stands now, and when to look again.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// The status fields the operator owns, except `grants`,
    /// `conditions` and `observedGeneration`.
    pub status: AccessRequestStatus,
    /// Why the request is in its phase, for the condition and the Event.
    pub message: String,
    /// When the phase changes by the clock alone, if it can.
    pub recheck_in: Option<Duration>,
}

impl Judgement {
    /// The phase judged.
    pub fn phase(&self) -> Option<RequestPhase> {
        self.status.phase
    }
}

/// Judges `request` against `policy` (its namespace's AccessPolicy of the
/// name it gives, if one exists) at `now`.
pub fn judge_request(
    request: &AccessRequest,
    policy: Option<&AccessPolicy>,
    now: Timestamp,
) -> Judgement {
    let now = whole_seconds(now);
    let current = request.status.clone().unwrap_or_default();
    if let Some(phase) = current.phase.filter(|p| p.is_final()) {
        let message = current
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.message.clone())
            .unwrap_or_else(|| phase.as_str().to_string());
        return Judgement {
            status: current,
            message,
            recheck_in: None,
        };
    }
    let approved = current.phase == Some(RequestPhase::Approved);
    let (policy, approval) = match fitting_policy(request, policy, &current) {
        Ok(found) => found,
        Err(why) if approved => {
            return settle(current, RequestPhase::Ended, format!("access ended: {why}"));
        }
        Err(why) => return settle(current, RequestPhase::Invalid, why),
    };
    let mut next = current.clone();
    match current.phase {
        None | Some(RequestPhase::Pending) => {
            next.phase = Some(RequestPhase::Pending);
            next.policy_uid = policy.uid();
            // Approvers follow the policy while the request waits.
            next.approvers = Some(approval.approvers.clone());
            let expires_at = match &current.expires_at {
                Some(Time(at)) => *at,
                None => {
                    let created = request
                        .metadata
                        .creation_timestamp
                        .as_ref()
                        .map_or(now, |Time(t)| whole_seconds(*t));
                    let ttl = parse_duration(&approval.request_ttl).unwrap_or(Duration::ZERO);
                    add(created, ttl)
                }
            };
            next.expires_at = Some(Time(expires_at));
            decide(request, approval, next, expires_at, now)
        }
        Some(RequestPhase::Approved) => {
            let Some(Time(until)) = current.valid_until else {
                return settle(
                    current,
                    RequestPhase::Ended,
                    "approved without an end".into(),
                );
            };
            if until <= now {
                return settle(
                    current,
                    RequestPhase::Ended,
                    format!("access ended at {until}"),
                );
            }
            let message = format!(
                "approved by {}: {}; access until {until}",
                current.approver.as_deref().unwrap_or("?"),
                current.decision_reason.as_deref().unwrap_or(""),
            );
            Judgement {
                status: current,
                message,
                recheck_in: until_then(now, until),
            }
        }
        // Final phases returned above.
        Some(_) => Judgement {
            status: current,
            message: String::new(),
            recheck_in: None,
        },
    }
}

/// A Pending request (`next`, expiring at `expires_at`) and its decision,
/// if any.
fn decide(
    request: &AccessRequest,
    approval: &Approval,
    mut next: AccessRequestStatus,
    expires_at: Timestamp,
    now: Timestamp,
) -> Judgement {
    let Some(decision) = &request.spec.decision else {
        if expires_at <= now {
            return settle(
                next,
                RequestPhase::Expired,
                format!("no decision before {expires_at}"),
            );
        }
        return Judgement {
            status: next,
            message: format!("waiting for an approver until {expires_at}"),
            recheck_in: until_then(now, expires_at),
        };
    };
    if add(expires_at, DECISION_GRACE) < now {
        return settle(
            next,
            RequestPhase::Expired,
            format!(
                "the decision of {} came after the request expired at {expires_at}",
                decision.approver
            ),
        );
    }
    if decision.approver == request.spec.requester {
        return settle(
            next,
            RequestPhase::Invalid,
            format!(
                "{} decided their own request; another approver must",
                decision.approver
            ),
        );
    }
    let approvers = &approval.approvers;
    if approvers.groups.is_empty() && !approvers.users.contains(&decision.approver) {
        return settle(
            next,
            RequestPhase::Invalid,
            format!(
                "{} is not an approver of the policy {}",
                decision.approver, request.spec.policy
            ),
        );
    }
    next.approver = Some(decision.approver.clone());
    next.decision_reason = Some(decision.reason.clone());
    next.decided_at = Some(Time(now));
    match decision.verdict {
        Verdict::Denied => {
            let message = format!("denied by {}: {}", decision.approver, decision.reason);
            settle(next, RequestPhase::Denied, message)
        }
        Verdict::Approved => {
            let duration = parse_duration(&request.spec.duration).unwrap_or(Duration::ZERO);
            let until = add(now, duration);
            next.phase = Some(RequestPhase::Approved);
            next.valid_until = Some(Time(until));
            Judgement {
                status: next,
                message: format!(
                    "approved by {}: {}; access until {until}",
                    decision.approver, decision.reason
                ),
                recheck_in: until_then(now, until),
            }
        }
    }
}

/// The policy if the request fits it, or why not.
fn fitting_policy<'p>(
    request: &AccessRequest,
    policy: Option<&'p AccessPolicy>,
    current: &AccessRequestStatus,
) -> Result<(&'p AccessPolicy, &'p Approval), String> {
    let spec = &request.spec;
    let name = &spec.policy;
    let policy = policy
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .ok_or_else(|| format!("AccessPolicy {name} not found in this namespace"))?;
    if let Some(uid) = &current.policy_uid
        && policy.uid().as_ref() != Some(uid)
    {
        return Err(format!(
            "AccessPolicy {name} was deleted and created again; request anew"
        ));
    }
    let approval = policy.spec.approval.as_ref().ok_or_else(|| {
        format!("AccessPolicy {name} does not require approval: its subjects need no request")
    })?;
    let asked = parse_duration(&spec.duration).map_err(|e| format!("duration: {e}"))?;
    let max = parse_duration(&approval.max_duration)
        .map_err(|e| format!("the policy's maxDuration: {e}"))?;
    if asked > max {
        return Err(format!(
            "duration {} exceeds the policy's maxDuration {}",
            spec.duration, approval.max_duration
        ));
    }
    let missing: Vec<&str> = spec
        .secrets
        .iter()
        .filter(|s| !policy.spec.secrets.iter().any(|p| &p.name == *s))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "AccessPolicy {name} does not grant {}",
            missing.join(", ")
        ));
    }
    if let Some(sa) = &spec.service_account {
        let subject = policy.spec.subjects.iter().any(|s| {
            s.service_account.as_ref() == Some(sa)
                || (s.namespace_selector.is_some()
                    && s.service_account_name.as_deref() == Some(sa.name.as_str()))
        });
        if !subject {
            return Err(format!(
                "service account {}/{} is not a subject of AccessPolicy {name}",
                sa.namespace, sa.name
            ));
        }
    }
    Ok((policy, approval))
}

/// The access `request` gives its policy at `now`: `Some` only while it is
/// Approved, judged against the policy of uid `policy_uid`, and before
/// its `validUntil`.
pub fn approved_access(
    request: &AccessRequest,
    policy_uid: &str,
    now: Timestamp,
) -> Option<ApprovedAccess> {
    let status = request.status.as_ref()?;
    let until = status.valid_until.as_ref()?.0;
    (status.phase == Some(RequestPhase::Approved)
        && status.policy_uid.as_deref() == Some(policy_uid)
        && until > now
        && request.metadata.deletion_timestamp.is_none())
    .then(|| ApprovedAccess {
        service_account: request.spec.service_account.clone(),
        secrets: request.spec.secrets.clone(),
        valid_until: until,
    })
}

/// `status` moved to the final `phase`, for `message`.
fn settle(mut status: AccessRequestStatus, phase: RequestPhase, message: String) -> Judgement {
    status.phase = Some(phase);
    Judgement {
        status,
        message,
        recheck_in: None,
    }
}

/// How long from `now` until `then` (plus a second, so the clock has
/// surely passed it when we look).
fn until_then(now: Timestamp, then: Timestamp) -> Option<Duration> {
    Duration::try_from(then.duration_since(now))
        .ok()
        .map(|left| left + Duration::from_secs(1))
}

/// `at` plus `duration`, or the end of time when that overflows.
fn add(at: Timestamp, duration: Duration) -> Timestamp {
    at.checked_add(duration).unwrap_or(Timestamp::MAX)
}

/// `at` without its fraction of a second: status times read as the
/// apiserver prints them, and `validUntil - decidedAt` is the duration.
fn whole_seconds(at: Timestamp) -> Timestamp {
    Timestamp::from_second(at.as_second()).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{AccessRequestSpec, Decision, ServiceAccountRef};
    use crate::testing;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn policy() -> AccessPolicy {
        testing::access_policy("payments", "orders-jit")
            .service_account("shop", "checkout")
            .service_account("shop", "batch")
            .secret("orders-db")
            .secret("orders-cache")
            .approval(&["bob"], &[], "8h", "1h")
            .build()
    }

    fn request(duration: &str) -> AccessRequest {
        AccessRequest {
            metadata: ObjectMeta {
                name: Some("alice-debug".into()),
                namespace: Some("payments".into()),
                creation_timestamp: Some(Time(at("2026-06-01T00:00:00Z"))),
                ..ObjectMeta::default()
            },
            spec: AccessRequestSpec {
                policy: "orders-jit".into(),
                secrets: vec!["orders-db".into()],
                service_account: Some(ServiceAccountRef {
                    namespace: "shop".into(),
                    name: "checkout".into(),
                }),
                duration: duration.into(),
                reason: "incident 42".into(),
                requester: "alice".into(),
                decision: None,
            },
            status: None,
        }
    }

    /// `request` after the operator judged it at `now` (status applied).
    fn judged(mut request: AccessRequest, now: &str) -> (AccessRequest, Judgement) {
        let judgement = judge_request(&request, Some(&policy()), at(now));
        request.status = Some(judgement.status.clone());
        (request, judgement)
    }

    fn decided(mut request: AccessRequest, verdict: Verdict, approver: &str) -> AccessRequest {
        request.spec.decision = Some(Decision {
            verdict,
            approver: approver.into(),
            reason: "looks right".into(),
        });
        request
    }

    #[test]
    fn a_new_valid_request_waits_with_the_policys_approvers_until_its_ttl() {
        let (_, j) = judged(request("30m"), "2026-06-01T00:00:05Z");
        assert_eq!(j.phase(), Some(RequestPhase::Pending));
        assert_eq!(j.status.approvers.unwrap().users, vec!["bob".to_string()]);
        assert_eq!(j.status.policy_uid.as_deref(), Some("orders-jit-uid"));
        assert_eq!(j.status.expires_at, Some(Time(at("2026-06-01T01:00:00Z"))));
        assert_eq!(j.recheck_in, Some(Duration::from_secs(3596)));
    }

    #[test]
    fn approval_starts_access_when_first_seen_for_the_duration() {
        let (pending, _) = judged(request("30m"), "2026-06-01T00:00:05Z");
        let (approved, j) = judged(
            decided(pending, Verdict::Approved, "bob"),
            "2026-06-01T00:10:00.7Z",
        );
        assert_eq!(j.phase(), Some(RequestPhase::Approved));
        assert_eq!(j.status.decided_at, Some(Time(at("2026-06-01T00:10:00Z"))));
        assert_eq!(j.status.valid_until, Some(Time(at("2026-06-01T00:40:00Z"))));
        assert_eq!(j.status.approver.as_deref(), Some("bob"));
        assert!(
            j.message.contains("approved by bob: looks right"),
            "{}",
            j.message
        );

        // Seen again later: nothing moves, not even the start.
        let (_, again) = judged(approved.clone(), "2026-06-01T00:20:00Z");
        assert_eq!(again.status, j.status);
        let access = approved_access(&approved, "orders-jit-uid", at("2026-06-01T00:20:00Z"));
        assert_eq!(access.unwrap().valid_until, at("2026-06-01T00:40:00Z"));
        assert_eq!(
            approved_access(&approved, "other-uid", at("2026-06-01T00:20:00Z")),
            None
        );

        let (ended, j) = judged(approved, "2026-06-01T00:40:00Z");
        assert_eq!(j.phase(), Some(RequestPhase::Ended));
        assert_eq!(
            approved_access(&ended, "orders-jit-uid", at("2026-06-01T00:39:00Z")),
            None
        );
    }

    #[test]
    fn a_denial_is_final_and_names_the_approver() {
        let (pending, _) = judged(request("30m"), "2026-06-01T00:00:05Z");
        let (denied, j) = judged(
            decided(pending, Verdict::Denied, "bob"),
            "2026-06-01T00:01:00Z",
        );
        assert_eq!(j.phase(), Some(RequestPhase::Denied));
        assert_eq!(j.message, "denied by bob: looks right");
        assert_eq!(j.recheck_in, None);
        let (_, again) = judged(denied, "2026-06-01T00:02:00Z");
        assert_eq!(again.phase(), Some(RequestPhase::Denied));
    }

    #[test]
    fn an_undecided_request_expires_and_a_late_approval_does_not_count() {
        let (pending, _) = judged(request("30m"), "2026-06-01T00:00:05Z");
        let (_, j) = judged(pending.clone(), "2026-06-01T01:00:00Z");
        assert_eq!(j.phase(), Some(RequestPhase::Expired));
        let (_, late) = judged(
            decided(pending, Verdict::Approved, "bob"),
            "2026-06-01T01:00:31Z",
        );
        assert_eq!(late.phase(), Some(RequestPhase::Expired));
        assert!(
            late.message.contains("after the request expired"),
            "{}",
            late.message
        );
    }

    #[test]
    fn requests_that_do_not_fit_the_policy_are_invalid_with_a_reason() {
        let cases: Vec<(AccessRequest, &str)> = vec![
            (
                request("9h"),
                "duration 9h exceeds the policy's maxDuration 8h",
            ),
            (
                AccessRequest {
                    spec: AccessRequestSpec {
                        secrets: vec!["ledger".into()],
                        ..request("1h").spec
                    },
                    ..request("1h")
                },
                "does not grant ledger",
            ),
            (
                AccessRequest {
                    spec: AccessRequestSpec {
                        service_account: Some(ServiceAccountRef {
                            namespace: "shop".into(),
                            name: "intruder".into(),
                        }),
                        ..request("1h").spec
                    },
                    ..request("1h")
                },
                "shop/intruder is not a subject",
            ),
        ];
        for (request, why) in cases {
            let (_, j) = judged(request, "2026-06-01T00:00:05Z");
            assert_eq!(j.phase(), Some(RequestPhase::Invalid));
            assert!(j.message.contains(why), "{} should say {why}", j.message);
        }
        let open = testing::access_policy("payments", "orders-jit")
            .service_account("shop", "checkout")
            .secret("orders-db")
            .build();
        let j = judge_request(&request("1h"), Some(&open), at("2026-06-01T00:00:05Z"));
        assert_eq!(j.phase(), Some(RequestPhase::Invalid));
        assert!(j.message.contains("does not require approval"));
        let j = judge_request(&request("1h"), None, at("2026-06-01T00:00:05Z"));
        assert!(j.message.contains("not found"));
    }

    #[test]
    fn self_approval_and_strangers_are_refused_even_without_the_admission_policy() {
        let (pending, _) = judged(request("30m"), "2026-06-01T00:00:05Z");
        let (_, own) = judged(
            decided(pending.clone(), Verdict::Approved, "alice"),
            "2026-06-01T00:01:00Z",
        );
        assert_eq!(own.phase(), Some(RequestPhase::Invalid));
        assert!(own.message.contains("their own request"));
        let (_, stranger) = judged(
            decided(pending, Verdict::Approved, "mallory"),
            "2026-06-01T00:01:00Z",
        );
        assert_eq!(stranger.phase(), Some(RequestPhase::Invalid));
        assert!(stranger.message.contains("not an approver"));
    }

    #[test]
    fn approved_access_ends_when_the_policy_stops_allowing_it_or_is_recreated() {
        let (pending, _) = judged(request("30m"), "2026-06-01T00:00:05Z");
        let (approved, _) = judged(
            decided(pending, Verdict::Approved, "bob"),
            "2026-06-01T00:01:00Z",
        );
        let recreated = testing::access_policy("payments", "orders-jit")
            .uid("new-uid")
            .service_account("shop", "checkout")
            .secret("orders-db")
            .approval(&["bob"], &[], "8h", "1h")
            .build();
        let j = judge_request(&approved, Some(&recreated), at("2026-06-01T00:02:00Z"));
        assert_eq!(j.phase(), Some(RequestPhase::Ended));
        assert!(j.message.contains("created again"), "{}", j.message);
    }
}
