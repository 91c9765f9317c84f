//! Engine tests: each detector, the structured passes, precedence, modes, fail-closed.

use super::*;
use crate::config::{AllowConfig, FieldConfig, RuleConfig};

fn r(s: &str) -> String {
    Redactor::defaults()
        .redact_record(s, Format::Auto, &mut Counts::default(), None)
        .text
        .into_owned()
}

fn with(cfg: RedactConfig) -> Redactor {
    Redactor::from_config(&cfg).unwrap()
}

#[test]
fn each_default_type_is_replaced_by_its_marker() {
    assert_eq!(
        r("mail jane.doe+x@example.co.uk now"),
        "mail [REDACTED:email] now"
    );
    assert_eq!(r("card 4111 1111 1111 1111 ok"), "card [REDACTED:card] ok");
    assert_eq!(r("card 4111-1111-1111-1111"), "card [REDACTED:card]");
    assert_eq!(r("tel +14155550123."), "tel [REDACTED:phone].");
    assert_eq!(r("from 10.61.43.43:22"), "from [REDACTED:ipv4]:22");
    assert_eq!(r("ssn 641-31-9853"), "ssn [REDACTED:ssn]");
    assert_eq!(
        r("iban GB90 GBID 8887 6908 0501 24 ok"),
        "iban [REDACTED:iban] ok"
    );
    assert_eq!(r("acct DE89370400440532013000"), "acct [REDACTED:iban]");
    assert_eq!(
        r("VAT number NL504435807B86 ok"),
        "VAT number [REDACTED:vat] ok"
    );
    assert_eq!(r("order 114-3941689-8772232"), "order [REDACTED:order_id]");
    assert_eq!(
        r("from 2a02:0:2f98:eb4a:d4ed::fcc9 port 22"),
        "from [REDACTED:ipv6] port 22"
    );
    assert_eq!(r("key AKIAIOSFODNN7EXAMPLE"), "key [REDACTED:aws_key]");
    assert_eq!(
        r("to lq7jhfkt2o2niel@marketplace.amazon.co.jp"),
        "to [REDACTED:marketplace_email]"
    );
    assert_eq!(
        r("token=sk_live_abcdefghijklmnop1234"),
        "token=[REDACTED:api_key]"
    );
    assert_eq!(r("born 1984-07-23 in X"), "born [REDACTED:dob] in X");
    assert_eq!(r("call (720)783-9908 now"), "call [REDACTED:phone] now");
}

#[test]
fn encoded_emails_are_found() {
    assert_eq!(
        r("GET /u?e=jane%40example.com&x=1"),
        "GET /u?e=[REDACTED:email]&x=1"
    );
    assert_eq!(
        r("GET /u?e=jane%2540example.com"),
        "GET /u?e=[REDACTED:email]"
    );
    assert_eq!(r(r"msg jane\u0040example.com"), "msg [REDACTED:email]");
    assert_eq!(r("qp jane=40example.com"), "qp [REDACTED:email]");
}

#[test]
fn look_alikes_are_left_alone() {
    for s in [
        "ref 4111111111111112 failed luhn",
        "build 1.2.300.4000",
        "version 10.2.3.4.5",
        "Mozilla/5.0 AppleWebKit/537.36 Chrome/124.0.0.0 Safari/537.36",
        "ssn-like 000-12-3456 and 666-12-3456",
        "id 1234567890123",
        "ts 2024-05-11T03:12:34.501Z",
        "java.lang.Object@6d06d69c",
        "uuid 123e4567-e89b-12d3-a456-426614174000",
        "release_date 1987-03-12",
        "at 12:30:45 took 1m12s",
        "card ************4242",
        "{\"email_hash\":\"sha256:ab\",\"phone_verified\":true}",
    ] {
        assert_eq!(r(s), s);
    }
}

#[test]
fn json_fields_are_masked_whatever_they_hold_and_bytes_elsewhere_are_kept() {
    let t = r#"{"a": 1.50, "buyer":{"BuyerName":"Jane Q","ShippingAddress":{"AddressLine1":"1 Main St","City":"X"}}, "n": 12345678901234567890}"#;
    assert_eq!(
        r(t),
        r#"{"a": 1.50, "buyer":{"BuyerName":"[REDACTED:name]","ShippingAddress":{"AddressLine1":"[REDACTED:address]","City":"[REDACTED:address]"}}, "n": 12345678901234567890}"#
    );
}

#[test]
fn a_card_logged_as_a_json_number_becomes_a_string() {
    let out = r(r#"{"pan_hint":4111111111111111,"x":1}"#);
    assert_eq!(out, r#"{"pan_hint":"[REDACTED:card]","x":1}"#);
    serde_json::from_str::<serde_json::Value>(&out).unwrap();
}

#[test]
fn embedded_escaped_json_is_walked() {
    let t =
        r#"{"body":"{\"customer\":{\"name\":\"Asunci\u00f3n R\",\"phone\":\"+525528409848\"}}"}"#;
    let out = r(t);
    assert!(!out.contains("Asunci"), "{out}");
    assert!(!out.contains("5528409848"), "{out}");
    serde_json::from_str::<serde_json::Value>(&out).unwrap();
}

#[test]
fn logfmt_and_kv_fields_are_masked() {
    assert_eq!(
        r(r#"level=info recipient="Augusto Jesus" name=Bob took=3s"#),
        r#"level=info recipient="[REDACTED:name]" name=[REDACTED:name] took=3s"#
    );
    assert_eq!(
        r(r#"Parameters: {"buyer"=>{"name"=>"Françoise Duhamel"}}"#),
        r#"Parameters: {"buyer"=>{"name"=>"[REDACTED:name]"}}"#
    );
}

#[test]
fn sql_literals_are_stripped_but_the_shape_stays() {
    let t = r#"AUDIT: SESSION,1,1,WRITE,UPDATE,,,"UPDATE sellers SET note = 'Jane Doe', n = 'x' WHERE id = 6946",<not logged>"#;
    assert_eq!(
        r(t),
        r#"AUDIT: SESSION,1,1,WRITE,UPDATE,,,"UPDATE sellers SET note = '?', n = '?' WHERE id = ?",<not logged>"#
    );
    // A literal that is also a finding keeps the finding's type (precedence).
    let t = "UPDATE sellers SET ssn = '145411787', x = 'a' WHERE id = 6946";
    assert_eq!(
        r(t),
        "UPDATE sellers SET ssn = '[REDACTED:ssn]', x = '?' WHERE id = ?"
    );
}

#[test]
fn base64_segments_holding_pii_are_masked_whole() {
    use base64::Engine;
    let blob = base64::engine::general_purpose::STANDARD
        .encode(r#"{"buyer":{"name":"Sarah Sweeney","email":"eowen@hotmail.com"}}"#);
    let out = r(&format!(r#"{{"payload":"{blob}"}}"#));
    assert_eq!(
        out,
        r#"{"payload":"[REDACTED:email]"}"#.replace("email", &out[22..out.len() - 3])
    );
    assert!(!out.contains(&blob));
    let clean = base64::engine::general_purpose::STANDARD.encode(r#"{"offset":9073,"limit":100}"#);
    let t = format!(r#"{{"NextToken":"{clean}"}}"#);
    assert_eq!(r(&t), t);
}

#[test]
fn counts_are_by_type() {
    let red = Redactor::defaults();
    let mut c = Counts::default();
    red.redact("a@b.io c@d.io 1.2.3.4", &mut c);
    let by: Vec<(&str, u32)> = c.0.iter().map(|(i, n)| (red.kind(*i), *n)).collect();
    assert!(by.contains(&("email", 2)));
    assert!(by.contains(&("ipv4", 1)));
}

#[test]
fn custom_rules_take_precedence_and_change_the_policy_hash() {
    let cfg = RedactConfig {
        rules: vec![RuleConfig {
            kind: "employee_id".into(),
            pattern: r"EMP-\d{6}|x@y\.io".into(),
            mode: None,
        }],
        ..Default::default()
    };
    let red = with(cfg);
    assert_eq!(
        red.redact("by EMP-123456 x@y.io", &mut Counts::default()),
        "by [REDACTED:employee_id] [REDACTED:employee_id]"
    );
    assert_ne!(red.policy_hash(), Redactor::defaults().policy_hash());
}

#[test]
fn overlapping_findings_merge_and_the_field_type_wins_over_detectors() {
    // The detector sees an e-mail inside the name field: one marker, typed by the field.
    assert_eq!(
        r(r#"{"name":"Jane jane@x.io"}"#),
        r#"{"name":"[REDACTED:name]"}"#
    );
}

#[test]
fn allow_list_lets_through_exact_findings_only_and_explains_them() {
    let cfg = RedactConfig {
        allow: vec![AllowConfig {
            kind: Some("email".into()),
            pattern: r"[a-z]+@example\.com".into(),
        }],
        ..Default::default()
    };
    let red = with(cfg);
    let mut ex = Vec::new();
    let out = red.redact_record(
        "ops@example.com jane@gmail.com",
        Format::Plain,
        &mut Counts::default(),
        Some(&mut ex),
    );
    assert_eq!(out.text, "ops@example.com [REDACTED:email]");
    assert!(ex.iter().any(|e| e.allowed && e.kind == "email"));
    // The same value under a PII field is still masked: the allow entry is for e-mails
    // found by the detector... and fields have type email too, so it is allowed there as
    // well, but an IP next to it is not affected.
    assert_eq!(
        red.redact("ops@example.com 10.0.0.1", &mut Counts::default()),
        "ops@example.com [REDACTED:ipv4]"
    );
}

#[test]
fn modes_mask_hash_drop_field_and_drop_record() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("p.key");
    mask::PseudonymKey::generate(&key).unwrap();
    let cfg = RedactConfig {
        modes: [
            ("card".to_string(), "mask".to_string()),
            ("email".to_string(), "hash".to_string()),
            ("phone".to_string(), "drop_field".to_string()),
            ("ssn".to_string(), "drop_record".to_string()),
        ]
        .into_iter()
        .collect(),
        hash_key: Some(key),
        ..Default::default()
    };
    let red = with(cfg);
    let mut c = Counts::default();
    assert_eq!(
        red.redact("c 4111111111111111", &mut c),
        "c ************1111"
    );
    let a = red.redact("to jane@x.io", &mut c).into_owned();
    let b = red.redact("to jane@x.io", &mut c).into_owned();
    assert!(a.starts_with("to [HASH:email:") && a == b, "{a}");
    let out = red.redact_record(
        r#"{"a":1,"phone":"+14155550123","b":2}"#,
        Format::Json,
        &mut c,
        None,
    );
    assert_eq!(out.text, r#"{"a":1,"b":2}"#);
    let out = red.redact_record("ssn 641-31-9853", Format::Plain, &mut c, None);
    assert!(out.dropped);
}

#[test]
fn hash_mode_without_a_key_is_a_config_error() {
    let cfg = RedactConfig {
        modes: [("email".to_string(), "hash".to_string())]
            .into_iter()
            .collect(),
        ..Default::default()
    };
    assert!(Redactor::from_config(&cfg).is_err());
}

#[test]
fn records_over_the_limit_or_too_deep_fail_closed() {
    let cfg = RedactConfig {
        max_record_bytes: 10,
        ..Default::default()
    };
    let red = with(cfg);
    let mut c = Counts::default();
    let out = red.redact_record(
        "a perfectly clean but long line",
        Format::Plain,
        &mut c,
        None,
    );
    assert!(out.unscannable);
    assert_eq!(out.text, "[REDACTED:unscannable]");
    assert_eq!(red.kind(c.0[0].0), "unscannable");
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let out = Redactor::defaults().redact_record(&deep, Format::Json, &mut c, None);
    assert!(out.unscannable);
}

#[test]
fn user_fields_and_sql_fields() {
    let cfg = RedactConfig {
        fields: vec![FieldConfig {
            name: "customer_ref".into(),
            kind: "name".into(),
        }],
        sql_fields: vec!["query".into()],
        ..Default::default()
    };
    let red = with(cfg);
    assert_eq!(
        red.redact_record(
            r#"{"customer_ref":"abc","query":"select a from t where b = 'x' and c = 3"}"#,
            Format::Json,
            &mut Counts::default(),
            None
        )
        .text,
        r#"{"customer_ref":"[REDACTED:name]","query":"select a from t where b = '?' and c = ?"}"#
    );
}

#[test]
fn explain_gives_positions_and_rules_never_values() {
    let mut ex = Vec::new();
    Redactor::defaults().redact_record(
        "x jane@x.io",
        Format::Plain,
        &mut Counts::default(),
        Some(&mut ex),
    );
    assert_eq!(ex.len(), 1);
    assert_eq!(
        (
            ex[0].start,
            ex[0].end,
            ex[0].kind.as_str(),
            ex[0].rule.as_str()
        ),
        (2, 11, "email", "email")
    );
}

#[test]
fn a_field_right_after_another_key_is_still_masked() {
    // `received:` once took `name=` as its bare value and hid the `name` key.
    assert_eq!(
        r(r#"INFO W-9 received: name="Adam Anderson" tin=373-77-6938"#),
        r#"INFO W-9 received: name="[REDACTED:name]" tin=[REDACTED:vat]"#
    );
    assert_eq!(r("msg: name: Bob"), "msg: name: [REDACTED:name]");
    // An ARN's `…:secret:prod/x` stays: it is no `key: value` pair.
    let arn = "from arn:aws:secretsmanager:eu-west-1:112677228308:secret:prod/sync-sSndbo ok";
    assert_eq!(r(arn), arn);
}
