//! Generated PII embedded in random text and in random JSON never survives redaction.

use logveil::config::Format;
use logveil::redact::{Counts, Redactor};
use proptest::prelude::*;

fn luhn_complete(prefix: &str) -> String {
    let digits: Vec<u32> = prefix.bytes().map(|b| u32::from(b - b'0')).collect();
    for check in 0..10 {
        let mut all = digits.clone();
        all.push(check);
        let sum: u32 = all
            .iter()
            .rev()
            .enumerate()
            .map(|(i, &d)| {
                if i % 2 == 1 {
                    let v = d * 2;
                    if v > 9 {
                        v - 9
                    } else {
                        v
                    }
                } else {
                    d
                }
            })
            .sum();
        if sum % 10 == 0 {
            return format!("{prefix}{check}");
        }
    }
    unreachable!()
}

fn pii() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            "[a-z][a-z0-9._]{2,12}",
            "[a-z]{3,10}",
            "(com|de|co\\.uk|io)"
        )
            .prop_map(|(l, d, t)| format!("{l}@{d}.{t}")),
        "4[0-9]{14}".prop_map(|p| luhn_complete(&p)),
        (1u8..=223, 0u8..=255, 0u8..=255, 1u8..=254)
            .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
        "[1-9][0-9]{2}-[0-9]{7}-[0-9]{7}",
        "\\+[1-9][0-9]{9,12}",
        "AKIA[A-Z0-9]{16}",
        ("[1-5][0-9]{2}", "[1-9][0-9]", "[1-9][0-9]{3}")
            .prop_map(|(a, g, s)| format!("{a}-{g}-{s}")),
    ]
}

fn filler() -> impl Strategy<Value = String> {
    "[a-zA-Z ,.:;()\\[\\]=]{0,30}"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn pii_in_random_text_never_survives(before in filler(), value in pii(), after in filler()) {
        let text = format!("{before} {value} {after}");
        let out = Redactor::defaults().redact_record(&text, Format::Auto, &mut Counts::default(), None);
        prop_assert!(!out.text.contains(&value), "{value} survived in {}", out.text);
    }

    #[test]
    fn pii_in_random_json_never_survives(key in "[a-z_]{1,12}", value in pii(), other in "[a-z ]{0,20}", nested in any::<bool>()) {
        let doc = if nested {
            serde_json::json!({"a": other, "b": {"c": [1, {key.clone(): value.clone()}]}})
        } else {
            serde_json::json!({key.clone(): value.clone(), "z": other})
        };
        let text = doc.to_string();
        let out = Redactor::defaults().redact_record(&text, Format::Json, &mut Counts::default(), None);
        prop_assert!(!out.text.contains(&value), "{value} survived in {}", out.text);
        prop_assert!(serde_json::from_str::<serde_json::Value>(&out.text).is_ok(), "not JSON: {}", out.text);
    }
}
