//! The operator's side of the read API: `logveil archive cat|search --store URL`.
//!
//! Sends `GET <store>/v1/records?<query>` with the operator's token (`Authorization:
//! Bearer`, from `--token-file` or `LOGVEIL_TOKEN`) or client certificate, and the reason in
//! `X-Logveil-Reason`; the store records the read in its custody ledger before answering
//! (`crate::receive::read`). A refusal comes back as [`ClientError::Refused`] with the
//! store's code and message.

use super::Query;
use crate::config::SinkTls;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--store {0}: not a URL")]
    Url(String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("request to {url} failed: {message}")]
    Transport { url: String, message: String },
    #[error("the store refused the read: HTTP {status} {code}: {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
}

/// What the store answered.
#[derive(Debug)]
pub struct Answer {
    pub body: Vec<u8>,
    pub records: u64,
    pub ledger_entry: Option<u64>,
}

/// Reads records from the store at `store` (its base URL, `https://host:port`).
pub async fn fetch(
    store: &str,
    token: Option<&str>,
    reason: &str,
    query: &Query,
    tls: Option<&SinkTls>,
) -> Result<Answer, ClientError> {
    let base = reqwest::Url::parse(store).map_err(|_| ClientError::Url(store.into()))?;
    let mut url = base
        .join(crate::receive::read::RECORDS_PATH)
        .map_err(|_| ClientError::Url(store.into()))?;
    url.query_pairs_mut().extend_pairs(query.to_pairs());
    let mut builder = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(300))
        .user_agent(concat!("logveil/", env!("CARGO_PKG_VERSION")));
    if url.scheme() == "https" {
        let cfg =
            crate::ship::client::tls_config(tls).map_err(|e| ClientError::Tls(format!("{e:#}")))?;
        builder = builder.use_preconfigured_tls(cfg);
    }
    let client = builder
        .build()
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let mut req = client.get(url.clone()).header("x-logveil-reason", reason);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let transport = |e: reqwest::Error| ClientError::Transport {
        url: url.to_string(),
        message: crate::ship::client::describe(&e),
    };
    let resp = req.send().await.map_err(transport)?;
    let status = resp.status();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let (records, ledger_entry) = (
        header("x-logveil-records"),
        header("x-logveil-ledger-entry"),
    );
    let body = resp.bytes().await.map_err(transport)?;
    if !status.is_success() {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        return Err(ClientError::Refused {
            status: status.as_u16(),
            code: v["error"].as_str().unwrap_or("?").into(),
            message: v["message"].as_str().unwrap_or("").into(),
        });
    }
    Ok(Answer {
        body: body.to_vec(),
        records: records.unwrap_or(0),
        ledger_entry,
    })
}
