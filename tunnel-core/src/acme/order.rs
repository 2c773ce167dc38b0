//! One order: a certificate for one name, proved by the configured challenge.

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, Order, OrderStatus, RetryPolicy,
};

use super::answers::Answers;
use super::{AcmeError, Challenge, Failure, ORDER_TIMEOUT};

/// Orders a certificate for `name`, answering its challenge meanwhile: the chain and its new
/// key, both PEM.
pub(super) async fn issue(
    account: &Account,
    name: &str,
    challenge: Challenge,
    answers: &Answers,
) -> Result<(String, String), Failure> {
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| {
        Failure::Name(AcmeError::Order { name: name.to_owned(), source })
    };
    let refused = |err: instant_acme::Error| match authority_wide(&err) {
        true => Failure::Authority(AcmeError::Order { name: name.to_owned(), source: err.into() }),
        false => failed(err.into()),
    };
    let identifiers = [Identifier::Dns(name.to_owned())];
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await.map_err(refused)?;
    let kind = match challenge {
        Challenge::Http01 => ChallengeType::Http01,
        Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    // Answers stay posted until the order is ready (or failed).
    let mut posted = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization.map_err(refused)?;
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(failed(format!("the authorization is {other:?}").into())),
        }
        let Some(mut offered) = authorization.challenge(kind.clone()) else {
            return Err(failed(format!("the authority offers no {challenge} challenge").into()));
        };
        let key_authorization = offered.key_authorization();
        posted.push(match challenge {
            Challenge::Http01 => answers.post_http01(name, &offered.token, key_authorization.as_str()),
            Challenge::TlsAlpn01 => {
                answers.post_tls_alpn01(name, key_authorization.digest().as_ref()).map_err(Failure::Name)?
            }
        });
        offered.set_ready().await.map_err(refused)?;
    }
    let retries = RetryPolicy::new().timeout(ORDER_TIMEOUT);
    let status = order.poll_ready(&retries).await.map_err(refused)?;
    drop(posted);
    if status != OrderStatus::Ready {
        return Err(failed(why_not_ready(&mut order, status).await.into()));
    }
    let csr_failed = |e: rcgen::Error| failed(format!("the certificate request: {e}").into());
    let key = rcgen::KeyPair::generate().map_err(csr_failed)?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(csr_failed)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(csr_failed)?;
    order.finalize_csr(csr.der()).await.map_err(refused)?;
    let chain = order.poll_certificate(&retries).await.map_err(refused)?;
    Ok((chain, key.serialize_pem()))
}

/// The authority's reasons for an order that did not become ready.
async fn why_not_ready(order: &mut Order, status: OrderStatus) -> String {
    let mut why: Vec<String> = order.state().error.iter().map(ToString::to_string).collect();
    let mut authorizations = order.authorizations();
    while let Some(Ok(authorization)) = authorizations.next().await {
        why.extend(authorization.challenges.iter().filter_map(|c| c.error.as_ref()).map(ToString::to_string));
    }
    match why.is_empty() {
        true => format!("the order is {status:?}"),
        false => format!("the order is {status:?}: {}", why.join("; ")),
    }
}

/// Whether `err` says the authority cannot take orders now, whatever the name: it limits this
/// account, fails itself (5xx), or cannot be reached; then every order waits, not just this
/// name's.
fn authority_wide(err: &instant_acme::Error) -> bool {
    match err {
        instant_acme::Error::Api(problem) => {
            let limited = problem
                .r#type
                .as_deref()
                .is_some_and(|t| t.ends_with(":rateLimited") || t.ends_with(":serverInternal"));
            limited || problem.status.is_some_and(|status| status == 429 || status >= 500)
        }
        // Our client's transport failures and deadlines.
        instant_acme::Error::Other(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(json: serde_json::Value) -> instant_acme::Error {
        instant_acme::Error::Api(serde_json::from_value(json).unwrap())
    }

    #[test]
    fn limits_outages_and_transport_hold_back_every_order_and_a_refused_name_only_itself() {
        let limited =
            problem(serde_json::json!({"type": "urn:ietf:params:acme:error:rateLimited", "status": 429}));
        let internal = problem(serde_json::json!({"type": "urn:ietf:params:acme:error:serverInternal"}));
        let unavailable = problem(serde_json::json!({"status": 503}));
        let transport = instant_acme::Error::Other("connection refused".into());
        for err in [limited, internal, unavailable, transport] {
            assert!(authority_wide(&err), "{err}");
        }
        let rejected = problem(
            serde_json::json!({"type": "urn:ietf:params:acme:error:rejectedIdentifier", "status": 400}),
        );
        let caa = problem(serde_json::json!({"type": "urn:ietf:params:acme:error:caa", "status": 403}));
        for err in [rejected, caa, instant_acme::Error::Timeout(None)] {
            assert!(!authority_wide(&err), "{err}");
        }
    }
}
