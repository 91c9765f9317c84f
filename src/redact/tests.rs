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
    assert_eq!(
        r(r#"msg: "name"=>"Jane Roe""#),
        r#"msg: "name"=>"[REDACTED:name]""#
    );
    // An ARN's `…:secret:prod/x` stays: it is no `key: value` pair.
    let arn = "from arn:aws:secretsmanager:eu-west-1:112677228308:secret:prod/sync-sSndbo ok";
    assert_eq!(r(arn), arn);
}

fn explained(red: &Redactor, text: &str, format: Format) -> (String, Vec<Explained>) {
    let mut ex = Vec::new();
    let out = red
        .redact_record(text, format, &mut Counts::default(), Some(&mut ex))
        .text
        .into_owned();
    (out, ex)
}

#[test]
fn keys_of_a_json_object_are_scanned_too() {
    let out = r(r#"{"jane.doe@example.com": 1, "by_ip": {"10.1.2.3": "ok"}}"#);
    assert_eq!(
        out,
        r#"{"[REDACTED:email]": 1, "by_ip": {"[REDACTED:ipv4]": "ok"}}"#
    );
    serde_json::from_str::<serde_json::Value>(&out).unwrap();
}

#[test]
fn a_record_over_the_limit_is_masked_whole_counted_and_explained_without_content() {
    let cfg = RedactConfig {
        max_record_bytes: 40,
        ..Default::default()
    };
    let red = with(cfg);
    let text = "card 4111 1111 1111 1111 for jane.doe@example.com at 10.61.43.43";
    let mut c = Counts::default();
    let mut ex = Vec::new();
    let out = red.redact_record(text, Format::Auto, &mut c, Some(&mut ex));
    assert!(out.unscannable && !out.dropped);
    assert_eq!(out.text, "[REDACTED:unscannable]");
    let by: Vec<(&str, u32)> = c.0.iter().map(|(i, n)| (red.kind(*i), *n)).collect();
    assert_eq!(by, [("unscannable", 1)]);
    assert_eq!(ex.len(), 1);
    assert_eq!(
        (
            ex[0].start,
            ex[0].end,
            ex[0].kind.as_str(),
            ex[0].rule.as_str()
        ),
        (0, text.len(), "unscannable", "limit")
    );
    // A record exactly at the limit is still scanned normally.
    let at = "x".repeat(36) + " a@b.io";
    let red = with(RedactConfig {
        max_record_bytes: at.len(),
        ..Default::default()
    });
    assert_eq!(
        red.redact(&at, &mut Counts::default()),
        format!("{} [REDACTED:email]", "x".repeat(36))
    );
}

fn key_file(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    mask::PseudonymKey::generate(&p).unwrap();
    p
}

#[test]
fn mask_mode_keeps_the_configured_number_of_last_characters() {
    let red = with(RedactConfig {
        modes: [("card".to_string(), "mask".to_string())].into(),
        mask_keep: 2,
        ..Default::default()
    });
    assert_eq!(
        red.redact("c 4111111111111111 ok", &mut Counts::default()),
        "c **************11 ok"
    );
    // Never more than half of the value.
    let red = with(RedactConfig {
        modes: [("ipv4".to_string(), "mask".to_string())].into(),
        mask_keep: 20,
        ..Default::default()
    });
    assert_eq!(
        red.redact("from 10.1.2.3", &mut Counts::default()),
        "from ****.2.3"
    );
}

#[test]
fn hash_mode_gives_the_same_token_for_the_same_value_on_every_redactor_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "fleet.key");
    let cfg = RedactConfig {
        modes: [("email".to_string(), "hash".to_string())].into(),
        hash_key: Some(key.clone()),
        ..Default::default()
    };
    let (host_a, host_b) = (with(cfg.clone()), with(cfg));
    let id = mask::PseudonymKey::load(&key).unwrap().id().to_string();
    let a = host_a
        .redact("to jane@x.io", &mut Counts::default())
        .into_owned();
    let b = host_b
        .redact("to jane@x.io", &mut Counts::default())
        .into_owned();
    assert_eq!(a, b, "same key, same value: same token on two hosts");
    let token = a.strip_prefix("to ").unwrap();
    let hex = token
        .strip_prefix(&format!("[HASH:email:{id}:"))
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or_else(|| panic!("{token}"));
    assert!(hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(!a.contains("jane"));
    let other = host_b.redact("to joe@x.io", &mut Counts::default());
    assert_ne!(other, a, "another value, another token");
    // Another key gives another token for the same value.
    let other_key = with(RedactConfig {
        modes: [("email".to_string(), "hash".to_string())].into(),
        hash_key: Some(key_file(dir.path(), "other.key")),
        ..Default::default()
    });
    assert_ne!(other_key.redact("to jane@x.io", &mut Counts::default()), a);
}

#[test]
fn drop_field_removes_the_member_in_json_and_logfmt_and_falls_back_outside_fields() {
    let red = with(RedactConfig {
        modes: [("name".to_string(), "drop_field".to_string())].into(),
        ..Default::default()
    });
    let mut c = Counts::default();
    let out = red.redact_record(
        r#"{"a":1, "buyer_name":"Jane Roe", "b":2}"#,
        Format::Json,
        &mut c,
        None,
    );
    assert_eq!(out.text, r#"{"a":1, "b":2}"#);
    let out = red.redact_record(
        r#"{"a":1,"buyer_name":"Jane Roe"}"#,
        Format::Json,
        &mut c,
        None,
    );
    assert_eq!(out.text, r#"{"a":1}"#);
    let out = red.redact_record(
        r#"level=info recipient="Jane Roe" took=3s"#,
        Format::Logfmt,
        &mut c,
        None,
    );
    assert_eq!(out.text, "level=info took=3s");
    // A user rule typed `name` outside any field: no member to drop, so it is redacted.
    let red = with(RedactConfig {
        rules: vec![RuleConfig {
            kind: "name".into(),
            pattern: "Jane Roe".into(),
            mode: None,
        }],
        modes: [("name".to_string(), "drop_field".to_string())].into(),
        ..Default::default()
    });
    assert_eq!(
        red.redact("sent to Jane Roe today", &mut c),
        "sent to [REDACTED:name] today"
    );
}

#[test]
fn drop_record_drops_the_whole_record_and_nothing_of_it_remains() {
    let red = with(RedactConfig {
        modes: [("ssn".to_string(), "drop_record".to_string())].into(),
        ..Default::default()
    });
    let mut c = Counts::default();
    let out = red.redact_record(
        "kyc ok for jane@x.io ssn 641-31-9853",
        Format::Plain,
        &mut c,
        None,
    );
    assert!(out.dropped);
    assert_eq!(out.text, "");
    // Records without that type are shipped as usual.
    let out = red.redact_record("kyc ok for jane@x.io", Format::Plain, &mut c, None);
    assert!(!out.dropped);
    assert_eq!(out.text, "kyc ok for [REDACTED:email]");
}

#[test]
fn a_user_rule_mode_overrides_the_type_mode() {
    let red = with(RedactConfig {
        rules: vec![RuleConfig {
            kind: "employee_id".into(),
            pattern: r"EMP-\d{6}".into(),
            mode: Some("mask".into()),
        }],
        modes: [("employee_id".to_string(), "redact".to_string())].into(),
        default_mode: "redact".into(),
        ..Default::default()
    });
    assert_eq!(
        red.redact("by EMP-123456 at 10.0.0.1", &mut Counts::default()),
        "by ******3456 at [REDACTED:ipv4]"
    );
}

#[test]
fn precedence_user_rules_then_fields_then_detectors_in_order_then_base64_then_sql() {
    // 1. A user rule beats the field name and the e-mail detector on the same span.
    let red = with(RedactConfig {
        rules: vec![RuleConfig {
            kind: "vip".into(),
            pattern: r"ceo@corp\.example".into(),
            mode: None,
        }],
        ..Default::default()
    });
    let (out, ex) = explained(&red, r#"{"buyer_email":"ceo@corp.example"}"#, Format::Json);
    assert_eq!(out, r#"{"buyer_email":"[REDACTED:vip]"}"#);
    assert_eq!(ex.len(), 1, "one merged span");
    assert_eq!(ex[0].rule, "rule[0]");
    // 2. A field name beats a detector: the IP inside a name field is one `name` span.
    let (out, ex) = explained(
        &Redactor::defaults(),
        r#"{"recipient":"host 10.1.2.3"}"#,
        Format::Json,
    );
    assert_eq!(out, r#"{"recipient":"[REDACTED:name]"}"#);
    assert_eq!(
        (ex[0].kind.as_str(), ex[0].rule.as_str()),
        ("name", "field")
    );
    // 3. Detectors in table order: a marketplace relay address is a marketplace e-mail.
    assert_eq!(
        r("to lq7jhfkt2o2niel@marketplace.amazon.com"),
        "to [REDACTED:marketplace_email]"
    );
    // 4. A base64 segment is typed by what it holds; 5. SQL literals only become `?`.
    use base64::Engine;
    let blob = base64::engine::general_purpose::STANDARD.encode("mail jane.doe@example.com ok");
    let (out, ex) = explained(
        &Redactor::defaults(),
        &format!("payload {blob}"),
        Format::Plain,
    );
    assert_eq!(out, "payload [REDACTED:email]");
    assert_eq!(ex[0].rule, "base64");
    assert_eq!(
        r("SELECT * FROM t WHERE mail = 'jane@x.io' AND n = 'abc'"),
        "SELECT * FROM t WHERE mail = '[REDACTED:email]' AND n = '?'"
    );
}

#[test]
fn an_allow_entry_never_switches_a_detector_off() {
    let red = with(RedactConfig {
        allow: vec![AllowConfig {
            kind: Some("email".into()),
            pattern: r"ops@example\.com".into(),
        }],
        ..Default::default()
    });
    // The allowed finding is let through and shown in --explain as allowed.
    let (out, ex) = explained(&red, "from ops@example.com", Format::Plain);
    assert_eq!(out, "from ops@example.com");
    assert_eq!(ex.len(), 1);
    assert!(ex[0].allowed && ex[0].mode == "allowed" && ex[0].kind == "email");
    // Other e-mails are still found by the same detector.
    assert_eq!(
        red.redact(
            "from ops@example.com and ops2@example.com",
            &mut Counts::default()
        ),
        "from ops@example.com and [REDACTED:email]"
    );
    // The same value under a field of another type is still masked (name, not e-mail).
    let (out, ex) = explained(&red, r#"{"recipient":"ops@example.com"}"#, Format::Json);
    assert_eq!(out, r#"{"recipient":"[REDACTED:name]"}"#);
    assert!(ex.iter().any(|e| e.allowed && e.kind == "email"));
    assert!(ex.iter().any(|e| !e.allowed && e.kind == "name"));
    // SQL literal stripping cannot be allowed away.
    assert_eq!(
        red.redact(
            "SELECT 1 FROM t WHERE m = 'ops@example.com'",
            &mut Counts::default()
        ),
        "SELECT ? FROM t WHERE m = '?'"
    );
}

#[test]
fn bearer_basic_and_secret_named_values_are_api_keys() {
    assert_eq!(
        r("GET /x Authorization: Bearer abC123xyZ789qwe456rty"),
        "GET /x Authorization: [REDACTED:api_key] [REDACTED:api_key]"
    );
    assert_eq!(
        r("retry with bearer abC123xyZ789qwe456rty now"),
        "retry with bearer [REDACTED:api_key] now"
    );
    // A plain lower-case word after `Bearer` is prose, not a token (documented).
    let prose = "sent with Bearer abcdefghijklmnopqrst";
    assert_eq!(r(prose), prose);
    assert!(
        !r(r#"curl -H "Authorization: Basic amFuZTpzM2NyZXQ=" http://h/"#)
            .contains("amFuZTpzM2NyZXQ=")
    );
    assert_eq!(
        r("connecting with password=hunter2 token=abc123 user=bob"),
        "connecting with password=[REDACTED:api_key] token=[REDACTED:api_key] user=bob"
    );
    assert_eq!(
        r("retry secret=s3cr3tValue"),
        "retry secret=[REDACTED:api_key]"
    );
    assert!(!r("conn postgres://app:s3cretPass@db.internal:5432/x").contains("s3cretPass"));
}

#[test]
fn aws_access_key_ids_and_secret_keys_are_found() {
    let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    for line in [
        format!("aws_secret_access_key={secret}"),
        format!("AWS_SECRET_ACCESS_KEY: {secret}"),
        format!(r#"{{"SecretAccessKey":"{secret}"}}"#),
    ] {
        let out = r(&line);
        assert!(!out.contains(secret), "{out}");
        assert!(out.contains("[REDACTED:"), "{out}");
    }
    assert_eq!(
        r("key ASIAY34FZKBOKMUTVV7A used"),
        "key [REDACTED:aws_key] used"
    );
    // Too short, or glued to a word: not a key id.
    for s in ["id AKIA1234", "xAKIAIOSFODNN7EXAMPLE"] {
        assert_eq!(r(s), s);
    }
}

#[test]
fn jwts_are_found_whole_and_only_when_not_glued_to_words() {
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    assert_eq!(r(&format!("jwt {jwt} done")), "jwt [REDACTED:jwt] done");
    assert_eq!(
        r(&format!("?id_token={jwt}&x=1")),
        "?id_token=[REDACTED:jwt]&x=1"
    );
    assert!(!r(&format!("cookie=s:{jwt};")).contains("eyJzdWIi"));
}

#[test]
fn ssn_area_group_and_serial_rules() {
    for ok in ["641-31-9853", "641 31 9853", "001-01-0001", "899-99-9999"] {
        assert_eq!(r(&format!("ssn {ok} ok")), "ssn [REDACTED:ssn] ok", "{ok}");
    }
    for bad in [
        "000-12-3456", // area 000
        "666-12-3456", // area 666
        "900-12-3456", // area 9xx
        "987-65-4321",
        "641-00-9853", // group 00
        "641-31-0000", // serial 0000
    ] {
        let s = format!("id {bad} ok");
        assert_eq!(r(&s), s, "{bad}");
    }
    // Nine plain digits only after an SSN keyword.
    assert_eq!(r("SSN: 641319853"), "SSN: [REDACTED:ssn]");
    assert_eq!(r("ref 641319853"), "ref 641319853");
}

#[test]
fn vat_ids_of_several_countries() {
    for id in [
        "DE123456789",
        "DE 123456789",
        "FR40303265045",
        "IT00743110157",
        "ESX1234567L",
        "NL004495445B01",
        "GB123456789",
        "ATU13585627",
        "BE0123456789",
        "PL5260250274",
        "SE556036079301",
        "CHE-123.456.788",
    ] {
        assert_eq!(r(&format!("vat {id} ok")), "vat [REDACTED:vat] ok", "{id}");
    }
    // A US EIN only after a tax keyword.
    assert_eq!(r("EIN 56-0776434"), "EIN [REDACTED:vat]");
}

#[test]
fn ibans_with_and_without_spaces_and_bad_checksums() {
    for iban in [
        "DE89370400440532013000",
        "DE89 3704 0044 0532 0130 00",
        "FR1420041010050500013M02606",
        "GB82WEST12345698765432",
        "GB82 WEST 1234 5698 7654 32",
        "NL91ABNA0417164300",
    ] {
        assert_eq!(
            r(&format!("iban {iban} ok")),
            "iban [REDACTED:iban] ok",
            "{iban}"
        );
    }
    for bad in [
        "DE88370400440532013000", // check digits
        "DE89370400440532013001", // one digit changed
        "GB82WEST1234569876543",  // too short for GB
    ] {
        let s = format!("iban {bad} ok");
        assert_eq!(r(&s), s, "{bad}");
    }
}

#[test]
fn cards_with_separators_and_bad_luhn() {
    for card in [
        "4111111111111111",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "378282246310005",
        "3782 822463 10005",
        "3056 930902 5904",
        "5555555555554444",
        "4111111111111111110",
    ] {
        assert_eq!(
            r(&format!("card {card} ok")),
            "card [REDACTED:card] ok",
            "{card}"
        );
    }
    for bad in [
        "4111111111111112",
        "4111 1111 1111 1112",
        "5555-5555-5555-4445",
        "4111 1111-1111 1111", // mixed separators: not one number
    ] {
        let s = format!("ref {bad} ok");
        assert_eq!(r(&s), s, "{bad}");
    }
}

#[test]
fn ipv6_forms() {
    for ip in [
        "2001:db8::1",
        "2001:0db8:0000:0000:0000:ff00:0042:8329",
        "2001:DB8::FF00:42:8329",
        "2a02:0:2f98:eb4a:d4ed::fcc9",
        "fe80::1ff:fe23:4567:890a",
    ] {
        assert_eq!(
            r(&format!("from {ip} port 22")),
            "from [REDACTED:ipv6] port 22",
            "{ip}"
        );
    }
    // An IPv4-mapped address: the IPv4 part, the personal part, is gone.
    assert!(!r("from ::ffff:192.0.2.128 port 22").contains("192.0.2.128"));
    // Times and MACs are no addresses.
    for s in ["at 12:30:45", "mac 00:1a:2b:3c:4d:5e"] {
        assert_eq!(r(s), s);
    }
}

#[test]
fn national_phone_formats_of_the_corpus_locales_after_a_keyword() {
    for (line, phone) in [
        ("tel (720) 783-9908", "(720) 783-9908"),
        ("tel 720-783-9908", "720-783-9908"),
        ("tel 720.783.9908", "720.783.9908"),
        ("phone 020 7946 0958", "020 7946 0958"),
        ("Telefon: 030 12345678", "030 12345678"),
        ("tel. 06 12 34 56 78", "06 12 34 56 78"),
        ("teléfono 612 345 678", "612 345 678"),
        ("telefone (11) 91234-5678", "(11) 91234-5678"),
        ("tel 06-12345678", "06-12345678"),
        ("tel. 0412 345 678", "0412 345 678"),
        ("mobile 98765 43210", "98765 43210"),
        ("telefon 08-123 456 78", "08-123 456 78"),
        ("telefon 512 345 678", "512 345 678"),
        ("電話 090-1234-5678", "090-1234-5678"),
        ("Tel: +49 (0)151 2345678", "+49 (0)151 2345678"),
        ("call +44 20 7946 0958 ext. 12", "+44 20 7946 0958 ext. 12"),
    ] {
        let out = r(line);
        assert!(!out.contains(phone), "{line} -> {out}");
        assert!(out.contains("[REDACTED:phone]"), "{line} -> {out}");
    }
    // Without a keyword, a national number in prose is not taken for a phone (documented).
    assert_eq!(r("took 612 345 678 ms"), "took 612 345 678 ms");
}

#[test]
fn json_keys_are_read_unescaped() {
    let out = r(r#"{"em\u0061il": "John Smith", "n\u0061me": "Jane Roe", "note": "ok"}"#);
    assert!(!out.contains("John") && !out.contains("Jane"), "{out}");
    assert!(out.contains(r#""note": "ok""#), "{out}");
    assert!(
        out.contains(r#""em\u0061il""#),
        "keys keep their bytes: {out}"
    );
}
