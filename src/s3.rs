//! A small S3 client: just the calls the object-storage archive needs, signed with AWS
//! Signature Version 4 (`aws-sigv4`) and sent with `reqwest` (rustls).
//!
//! What it owns: building path-style URLs (`<endpoint>/<bucket>/<key>`), signing every
//! request (the payload's SHA-256 is signed too), and parsing the XML answers of the list
//! calls. What it does not: retries (the caller's answer to a failure is the agent's resend),
//! credentials discovery beyond what the caller passes in, multipart uploads (a batch is at
//! most `max_body_bytes`, well under S3's 5 GiB single-PUT limit).
//!
//! Calls: `PUT` (with any extra headers: `If-None-Match`, Object Lock, metadata), `GET` and
//! `HEAD` by key and optional version id, `DELETE` (tests use it to prove Object Lock),
//! `ListObjectsV2` and `ListObjectVersions` (both paginated to the end), bucket creation with
//! Object Lock, and the bucket's versioning and Object Lock configuration.
//!
//! Keys are percent-encoded byte by byte except unreserved characters and `/`; the archive's
//! keys only ever hold safe identifiers, digits, `.`, `-`, `_` and `/`.

use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use reqwest::{Method, StatusCode};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// How long one S3 request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest error body kept for an error message.
const ERROR_BODY_MAX: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("S3 {op} {key}: {source}")]
    Http {
        op: &'static str,
        key: String,
        source: reqwest::Error,
    },
    #[error("S3 {op} {key}: HTTP {status}: {body}")]
    Status {
        op: &'static str,
        key: String,
        status: StatusCode,
        body: String,
    },
    #[error("S3 request signing: {0}")]
    Sign(String),
    #[error("S3 {op}: unreadable answer: {message}")]
    Xml { op: &'static str, message: String },
    #[error("S3 client setup: {0}")]
    Setup(String),
}

/// Where and as whom to talk S3.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// `http(s)://host[:port]`, no path.
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// An object's bytes and what came with them.
#[derive(Debug, Clone)]
pub struct Object {
    pub bytes: Bytes,
    pub version_id: Option<String>,
    /// `x-amz-meta-*` headers, by name without the prefix.
    pub metadata: BTreeMap<String, String>,
    /// `x-amz-object-lock-mode` and `x-amz-object-lock-retain-until-date`, when locked.
    pub lock_mode: Option<String>,
    pub lock_until: Option<String>,
}

/// What a conditional PUT did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    Created {
        version_id: Option<String>,
    },
    /// `412`: the condition (such as `If-None-Match: *`) did not hold; nothing was written.
    PreconditionFailed,
    /// `409`: a concurrent conditional write to the same key is in flight; try again.
    Conflict,
}

/// One entry of `ListObjectVersions`: a version or a delete marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionEntry {
    pub key: String,
    pub version_id: String,
    pub is_latest: bool,
    pub delete_marker: bool,
    /// RFC 3339, as the server wrote it.
    pub last_modified: String,
}

#[derive(Debug, Clone)]
pub struct S3Client {
    http: reqwest::Client,
    settings: S3Settings,
}

fn encode_path(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn encode_query(v: &str) -> String {
    encode_path(v).replace('/', "%2F")
}

impl S3Client {
    pub fn new(settings: S3Settings) -> Result<Self, S3Error> {
        let tls =
            crate::ship::client::tls_config(None).map_err(|e| S3Error::Setup(e.to_string()))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| S3Error::Setup(e.to_string()))?;
        let mut settings = settings;
        settings.endpoint = settings.endpoint.trim_end_matches('/').to_string();
        Ok(S3Client { http, settings })
    }

    pub fn bucket(&self) -> &str {
        &self.settings.bucket
    }

    /// `s3://bucket/key`, for messages.
    pub fn display(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.settings.bucket)
    }

    fn url(&self, key: &str, query: &[(&str, &str)]) -> String {
        let mut url = format!(
            "{}/{}/{}",
            self.settings.endpoint,
            encode_path(&self.settings.bucket),
            encode_path(key)
        );
        let mut q: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{}={}", encode_query(k), encode_query(v)))
            .collect();
        q.sort();
        if !q.is_empty() {
            url.push('?');
            url.push_str(&q.join("&"));
        }
        url
    }

    async fn send(
        &self,
        op: &'static str,
        method: Method,
        key: &str,
        query: &[(&str, &str)],
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<reqwest::Response, S3Error> {
        let url = self.url(key, query);
        let creds = aws_credential_types::Credentials::new(
            &self.settings.access_key_id,
            &self.settings.secret_access_key,
            None,
            None,
            "logveil-config",
        );
        let identity = creds.into();
        let mut ss = SigningSettings::default();
        ss.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        ss.percent_encoding_mode = PercentEncodingMode::Single;
        ss.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.settings.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(ss)
            .build()
            .map_err(|e| S3Error::Sign(e.to_string()))?
            .into();
        let signable = SignableRequest::new(
            method.as_str(),
            url.as_str(),
            headers.iter().map(|(k, v)| (*k, v.as_str())),
            SignableBody::Bytes(&body),
        )
        .map_err(|e| S3Error::Sign(e.to_string()))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| S3Error::Sign(e.to_string()))?
            .into_parts();
        let mut req = self.http.request(method, &url);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        for (k, v) in instructions.headers() {
            req = req.header(k, v);
        }
        req.body(body).send().await.map_err(|source| S3Error::Http {
            op,
            key: key.to_string(),
            source,
        })
    }

    async fn fail(op: &'static str, key: &str, resp: reqwest::Response) -> S3Error {
        let status = resp.status();
        let mut body = resp.text().await.unwrap_or_default();
        if body.len() > ERROR_BODY_MAX {
            let mut end = ERROR_BODY_MAX;
            while !body.is_char_boundary(end) {
                end -= 1;
            }
            body.truncate(end);
        }
        S3Error::Status {
            op,
            key: key.to_string(),
            status,
            body,
        }
    }

    async fn read_body(
        op: &'static str,
        key: &str,
        resp: reqwest::Response,
    ) -> Result<Bytes, S3Error> {
        resp.bytes().await.map_err(|source| S3Error::Http {
            op,
            key: key.to_string(),
            source,
        })
    }

    /// `PUT key` with `headers` (names in lowercase).
    pub async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        headers: &[(&str, String)],
    ) -> Result<PutOutcome, S3Error> {
        let resp = self
            .send("PUT", Method::PUT, key, &[], headers, body)
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(PutOutcome::Created {
                version_id: header(&resp, "x-amz-version-id"),
            }),
            StatusCode::PRECONDITION_FAILED => Ok(PutOutcome::PreconditionFailed),
            StatusCode::CONFLICT => Ok(PutOutcome::Conflict),
            _ => Err(Self::fail("PUT", key, resp).await),
        }
    }

    /// `GET key` (a given version, or the current one); `None` when there is none (404,
    /// also when the current version is a delete marker).
    pub async fn get_object(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<Option<Object>, S3Error> {
        let query: Vec<(&str, &str)> = version_id.map(|v| ("versionId", v)).into_iter().collect();
        let resp = self
            .send("GET", Method::GET, key, &query, &[], Bytes::new())
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(Self::fail("GET", key, resp).await);
        }
        let version_id = header(&resp, "x-amz-version-id");
        let metadata = metadata(&resp);
        let lock_mode = header(&resp, "x-amz-object-lock-mode");
        let lock_until = header(&resp, "x-amz-object-lock-retain-until-date");
        let bytes = Self::read_body("GET", key, resp).await?;
        Ok(Some(Object {
            bytes,
            version_id,
            metadata,
            lock_mode,
            lock_until,
        }))
    }

    /// `HEAD key`: the current version's metadata, `None` when there is none.
    pub async fn head_object(
        &self,
        key: &str,
    ) -> Result<Option<BTreeMap<String, String>>, S3Error> {
        let resp = self
            .send("HEAD", Method::HEAD, key, &[], &[], Bytes::new())
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(Self::fail("HEAD", key, resp).await);
        }
        Ok(Some(metadata(&resp)))
    }

    /// `DELETE key` (a version, or the current object: then a delete marker on a versioned
    /// bucket). Returns the status; a refusal is not an error here.
    pub async fn delete_object(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<StatusCode, S3Error> {
        let query: Vec<(&str, &str)> = version_id.map(|v| ("versionId", v)).into_iter().collect();
        let resp = self
            .send("DELETE", Method::DELETE, key, &query, &[], Bytes::new())
            .await?;
        Ok(resp.status())
    }

    /// Creates the bucket with Object Lock enabled (which also turns versioning on).
    pub async fn create_locked_bucket(&self) -> Result<(), S3Error> {
        let headers = [("x-amz-bucket-object-lock-enabled", "true".to_string())];
        let resp = self
            .send("CreateBucket", Method::PUT, "", &[], &headers, Bytes::new())
            .await?;
        if !resp.status().is_success() {
            return Err(Self::fail("CreateBucket", "", resp).await);
        }
        Ok(())
    }

    /// `GET` on the bucket with `query`: the XML answer. `subject` names what was asked
    /// about in an error (a prefix; empty for the bucket itself).
    async fn get_xml(
        &self,
        op: &'static str,
        query: &[(&str, &str)],
        subject: &str,
    ) -> Result<String, S3Error> {
        let resp = self
            .send(op, Method::GET, "", query, &[], Bytes::new())
            .await?;
        if !resp.status().is_success() {
            return Err(Self::fail(op, subject, resp).await);
        }
        let body = Self::read_body(op, subject, resp).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    async fn bucket_xml(&self, op: &'static str, sub: &str) -> Result<String, S3Error> {
        self.get_xml(op, &[(sub, "")], "").await
    }

    /// Whether the bucket has Object Lock enabled and versioning on.
    pub async fn bucket_is_locked(&self) -> Result<(bool, bool), S3Error> {
        let lock = self
            .bucket_xml("GetObjectLockConfiguration", "object-lock")
            .await;
        let lock = match lock {
            Ok(xml) => {
                let doc = parse("GetObjectLockConfiguration", &xml)?;
                text_of(doc.root_element(), "ObjectLockEnabled").as_deref() == Some("Enabled")
            }
            // No configuration at all: a bucket made without Object Lock.
            Err(S3Error::Status { status, .. }) if status == StatusCode::NOT_FOUND => false,
            Err(e) => return Err(e),
        };
        let xml = self.bucket_xml("GetBucketVersioning", "versioning").await?;
        let doc = parse("GetBucketVersioning", &xml)?;
        let versioned = text_of(doc.root_element(), "Status").as_deref() == Some("Enabled");
        Ok((lock, versioned))
    }

    /// Every key under `prefix` after `start_after` (all pages), in key order.
    pub async fn list_keys(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Vec<String>, S3Error> {
        let op = "ListObjectsV2";
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![("list-type", "2"), ("prefix", prefix)];
            if let Some(t) = &token {
                query.push(("continuation-token", t));
            } else if let Some(s) = start_after {
                query.push(("start-after", s));
            }
            let xml = self.get_xml(op, &query, prefix).await?;
            let doc = parse(op, &xml)?;
            let root = doc.root_element();
            for c in root.children().filter(|n| n.has_tag_name_local("Contents")) {
                if let Some(k) = text_of(c, "Key") {
                    keys.push(k);
                }
            }
            let truncated = text_of(root, "IsTruncated").as_deref() == Some("true");
            token = text_of(root, "NextContinuationToken");
            if !truncated || token.is_none() {
                break;
            }
        }
        Ok(keys)
    }

    /// Every version and delete marker under `prefix` (all pages).
    pub async fn list_versions(&self, prefix: &str) -> Result<Vec<VersionEntry>, S3Error> {
        self.list_versions_after(prefix, None).await
    }

    /// Every version and delete marker under `prefix` of keys after `start_after`.
    pub async fn list_versions_after(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Vec<VersionEntry>, S3Error> {
        let op = "ListObjectVersions";
        let mut out = Vec::new();
        let mut marker: Option<(String, String)> =
            start_after.map(|k| (k.to_string(), String::new()));
        loop {
            let mut query = vec![("versions", ""), ("prefix", prefix)];
            if let Some((k, v)) = &marker {
                query.push(("key-marker", k));
                if !v.is_empty() {
                    query.push(("version-id-marker", v));
                }
            }
            let xml = self.get_xml(op, &query, prefix).await?;
            let doc = parse(op, &xml)?;
            let root = doc.root_element();
            for c in root.children().filter(|n| n.is_element()) {
                let delete_marker = match c.tag_name().name() {
                    "Version" => false,
                    "DeleteMarker" => true,
                    _ => continue,
                };
                let (Some(key), Some(version_id)) = (text_of(c, "Key"), text_of(c, "VersionId"))
                else {
                    return Err(S3Error::Xml {
                        op,
                        message: "an entry without Key or VersionId".into(),
                    });
                };
                out.push(VersionEntry {
                    key,
                    version_id,
                    is_latest: text_of(c, "IsLatest").as_deref() == Some("true"),
                    delete_marker,
                    last_modified: text_of(c, "LastModified").unwrap_or_default(),
                });
            }
            let truncated = text_of(root, "IsTruncated").as_deref() == Some("true");
            match (truncated, text_of(root, "NextKeyMarker")) {
                (true, Some(k)) => {
                    let v = text_of(root, "NextVersionIdMarker").unwrap_or_default();
                    let next = Some((k, v));
                    if next == marker {
                        return Err(S3Error::Xml {
                            op,
                            message: "pagination does not advance".into(),
                        });
                    }
                    marker = next;
                }
                _ => break,
            }
        }
        Ok(out)
    }
}

/// Orders version entries oldest first. S3 lists each key's versions newest first, and
/// `LastModified` may have one-second resolution, so: reverse the listing, then sort by time
/// keeping that order among equal times.
pub fn oldest_first(entries: &mut [VersionEntry]) {
    entries.reverse();
    entries.sort_by(|a, b| a.last_modified.cmp(&b.last_modified));
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn metadata(resp: &reqwest::Response) -> BTreeMap<String, String> {
    resp.headers()
        .iter()
        .filter_map(|(k, v)| {
            let name = k.as_str().strip_prefix("x-amz-meta-")?;
            Some((name.to_string(), v.to_str().ok()?.to_string()))
        })
        .collect()
}

trait LocalName {
    fn has_tag_name_local(&self, name: &str) -> bool;
}

impl LocalName for roxmltree::Node<'_, '_> {
    fn has_tag_name_local(&self, name: &str) -> bool {
        self.is_element() && self.tag_name().name() == name
    }
}

fn parse<'a>(op: &'static str, xml: &'a str) -> Result<roxmltree::Document<'a>, S3Error> {
    roxmltree::Document::parse(xml).map_err(|e| S3Error::Xml {
        op,
        message: e.to_string(),
    })
}

/// The text of `node`'s first child element named `name`.
fn text_of(node: roxmltree::Node<'_, '_>, name: &str) -> Option<String> {
    node.children()
        .find(|n| n.has_tag_name_local(name))
        .map(|n| n.text().unwrap_or("").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> S3Client {
        S3Client::new(S3Settings {
            endpoint: "http://127.0.0.1:9000/".into(),
            bucket: "logs".into(),
            region: "us-east-1".into(),
            access_key_id: "k".into(),
            secret_access_key: "s".into(),
        })
        .unwrap()
    }

    #[test]
    fn urls_are_path_style_with_sorted_encoded_queries() {
        let c = client();
        assert_eq!(
            c.url("a/b c.lvb", &[]),
            "http://127.0.0.1:9000/logs/a/b%20c.lvb"
        );
        assert_eq!(
            c.url("", &[("prefix", "p/x"), ("list-type", "2")]),
            "http://127.0.0.1:9000/logs/?list-type=2&prefix=p%2Fx"
        );
        assert_eq!(
            c.url("", &[("versions", "")]),
            "http://127.0.0.1:9000/logs/?versions="
        );
    }

    #[test]
    fn versions_of_one_second_are_ordered_by_the_listing() {
        let v = |id: &str, t: &str| VersionEntry {
            key: "k".into(),
            version_id: id.into(),
            is_latest: false,
            delete_marker: false,
            last_modified: t.into(),
        };
        // As listed: newest first.
        let mut list = vec![
            v("c", "2026-01-01T00:00:02Z"),
            v("b", "2026-01-01T00:00:01Z"),
            v("a", "2026-01-01T00:00:01Z"),
        ];
        oldest_first(&mut list);
        let ids: Vec<_> = list.iter().map(|e| e.version_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }

    #[test]
    fn version_listings_parse_versions_and_delete_markers() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListVersionsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
<Name>logs</Name><IsTruncated>false</IsTruncated>
<Version><Key>a/1.lvb</Key><VersionId>v1</VersionId><IsLatest>false</IsLatest><LastModified>2026-01-02T03:04:05Z</LastModified></Version>
<DeleteMarker><Key>a/1.lvb</Key><VersionId>m1</VersionId><IsLatest>true</IsLatest><LastModified>2026-01-03T03:04:05Z</LastModified></DeleteMarker>
</ListVersionsResult>"#;
        let doc = parse("t", xml).unwrap();
        let root = doc.root_element();
        let names: Vec<_> = root
            .children()
            .filter(|n| n.is_element())
            .map(|n| n.tag_name().name().to_string())
            .collect();
        assert_eq!(names, ["Name", "IsTruncated", "Version", "DeleteMarker"]);
        assert_eq!(text_of(root, "IsTruncated").as_deref(), Some("false"));
    }
}
