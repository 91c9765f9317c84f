//! Generated PII embedded in random text and in random JSON never survives redaction:
//! e-mails (plain, URL-encoded, marketplace relay), cards, IPv4 and IPv6, order ids, E.164
//! and national phones (after a keyword), AWS key ids, SSNs, IBANs, VAT ids and JWTs.

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

/// A valid IBAN: `country`, two check digits (ISO 7064 mod 97-10), `bban`.
fn iban_complete(country: &str, bban: &str) -> String {
    let rearranged = format!("{bban}{country}00");
    let mut rem = 0u32;
    for c in rearranged.chars() {
        let v = c.to_digit(36).unwrap();
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    format!("{country}{:02}{bban}", 98 - rem)
}

/// Groups of four, as IBANs are printed.
fn grouped(s: &str) -> String {
    s.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(" ")
}

fn b64url(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

/// A national phone number (`pattern`) after the phone keyword `keyword`.
fn national(keyword: &'static str, pattern: &'static str) -> BoxedStrategy<(String, String)> {
    pattern
        .prop_map(move |n| (format!("{keyword}{n}"), n))
        .boxed()
}

/// `(text to embed, value that must not survive)`: the text may carry the context a
/// detector documents as needed (a phone keyword before a national number).
fn pii() -> impl Strategy<Value = (String, String)> {
    let same = |v: String| (v.clone(), v);
    prop_oneof![
        (
            "[a-z][a-z0-9._]{2,12}",
            "[a-z]{3,10}",
            "(com|de|co\\.uk|io)"
        )
            .prop_map(move |(l, d, t)| same(format!("{l}@{d}.{t}"))),
        "4[0-9]{14}".prop_map(move |p| same(luhn_complete(&p))),
        (1u8..=223, 0u8..=255, 0u8..=255, 1u8..=254)
            .prop_map(move |(a, b, c, d)| same(format!("{a}.{b}.{c}.{d}"))),
        "[1-9][0-9]{2}-[0-9]{7}-[0-9]{7}".prop_map(same),
        "\\+[1-9][0-9]{9,12}".prop_map(same),
        "AKIA[A-Z0-9]{16}".prop_map(same),
        ("[1-5][0-9]{2}", "[1-9][0-9]", "[1-9][0-9]{3}")
            .prop_map(move |(a, g, s)| same(format!("{a}-{g}-{s}"))),
        // IBANs, compact or in groups of four.
        ("[0-9]{18}", any::<bool>()).prop_map(|(bban, spaced)| {
            let iban = iban_complete("DE", &bban);
            let text = if spaced { grouped(&iban) } else { iban };
            (text.clone(), text)
        }),
        ("[A-Z]{4}[0-9]{14}", any::<bool>()).prop_map(|(bban, spaced)| {
            let iban = iban_complete("GB", &bban);
            let text = if spaced { grouped(&iban) } else { iban };
            (text.clone(), text)
        }),
        // VAT ids of several countries.
        prop_oneof![
            "DE[1-9][0-9]{8}",
            "ATU[0-9]{8}",
            "NL[0-9]{9}B[0-9]{2}",
            "GB[1-9][0-9]{8}",
            "IT[0-9]{11}",
        ]
        .prop_map(same),
        // IPv6: eight groups, exploded or with the longest zero run compressed.
        (
            proptest::collection::vec(0u16..=0xffff, 8),
            1usize..7,
            any::<bool>()
        )
            .prop_map(move |(g, zero_at, upper)| {
                let mut groups: Vec<String> = g.iter().map(|x| format!("{x:x}")).collect();
                groups[0] = format!("2{:03x}", g[0] & 0xfff);
                let text = if zero_at % 2 == 0 {
                    groups.join(":")
                } else {
                    let mut head = groups[..zero_at].join(":");
                    head.push_str("::");
                    head.push_str(&groups[zero_at + 1..].join(":"));
                    head
                };
                same(if upper { text.to_uppercase() } else { text })
            }),
        // JWTs.
        ("[a-z0-9]{4,16}", "[A-Za-z0-9_-]{43}").prop_map(move |(sub, sig)| {
            same(format!(
                "{}.{}.{sig}",
                b64url(r#"{"alg":"HS256","typ":"JWT"}"#),
                b64url(&format!(r#"{{"sub":"{sub}","iat":1700000000}}"#))
            ))
        }),
        // National phone numbers after a keyword, in the corpus locales' formats.
        prop_oneof![
            national("tel. ", "0[1-9]( [0-9]{2}){4}"),
            national("Telefon: ", "0[1-9][0-9]{2} [0-9]{7}"),
            national("phone ", "\\([2-9][0-8][0-9]\\) [2-9][0-9]{2}-[0-9]{4}"),
            national("電話 ", "0[789]0-[0-9]{4}-[0-9]{4}"),
            national("mobile ", "[6-9][0-9]{4} [0-9]{5}"),
            national("teléfono ", "[6-9][0-9]{2} [0-9]{3} [0-9]{3}"),
        ],
        // Amazon marketplace relay addresses.
        ("[a-z0-9]{15}", "(com|de|co\\.uk|co\\.jp|fr|it|es)")
            .prop_map(move |(l, t)| same(format!("{l}@marketplace.amazon.{t}"))),
        // URL-encoded e-mails (`%40`, and `%2B` for a plus).
        (
            "[a-z][a-z0-9.]{2,12}",
            "(|%2B[a-z]{2,5})",
            "[a-z]{3,10}\\.(com|de)"
        )
            .prop_map(move |(l, plus, d)| same(format!("{l}{plus}%40{d}"))),
    ]
}

fn filler() -> impl Strategy<Value = String> {
    "[a-zA-Z ,.:;()\\[\\]=]{0,30}"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn pii_in_random_text_never_survives(before in filler(), (embed, value) in pii(), after in filler()) {
        let text = format!("{before} {embed} {after}");
        prop_assert!(text.contains(&value));
        let out = Redactor::defaults().redact_record(&text, Format::Auto, &mut Counts::default(), None);
        prop_assert!(!out.text.contains(&value), "{value} survived in {}", out.text);
    }

    #[test]
    fn pii_in_random_json_never_survives(key in "[a-y_][a-z_]{0,11}", (embed, value) in pii(), other in "[a-z ]{0,20}", nested in any::<bool>()) {
        let doc = if nested {
            serde_json::json!({"a": other, "b": {"c": [1, {key.clone(): embed.clone()}]}})
        } else {
            serde_json::json!({key.clone(): embed.clone(), "z": other})
        };
        let text = doc.to_string();
        prop_assert!(text.contains(&value));
        let out = Redactor::defaults().redact_record(&text, Format::Json, &mut Counts::default(), None);
        prop_assert!(!out.text.contains(&value), "{value} survived in {}", out.text);
        prop_assert!(serde_json::from_str::<serde_json::Value>(&out.text).is_ok(), "not JSON: {}", out.text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// A name under a PII field name is masked whatever comes before the pair (another
    /// `key:` or `key=` that could take the field's key as its own value) and even when a
    /// Latin-1 byte inside it makes the line invalid UTF-8.
    #[test]
    fn a_name_under_a_field_name_never_survives_a_prefix_or_an_invalid_byte(
        prefix in "([a-z]{3,10}(: |=| ))?",
        field in proptest::sample::select(vec!["name", "buyer_name", "recipient", "BuyerName", "shipping_address", "card_holder"]),
        first in "[A-Z][a-z]{3,8}",
        last in "[A-Z][a-z]{3,10}",
        style in 0u8..3,
        latin1 in any::<bool>(),
    ) {
        let mut value = format!("{first} {last}").into_bytes();
        if latin1 {
            let at = value.len() - 2;
            value[at] = 0xe9;
        }
        let mut line = Vec::new();
        let (open, close) = match style {
            0 => (format!("{prefix}{field}=\""), "\" took=3s".to_string()),
            1 => (format!("{prefix}{{\"msg\":\"ok\",\"{field}\":\""), "\"}".to_string()),
            _ => (format!("{prefix}\"{field}\"=>\""), "\"".to_string()),
        };
        line.extend_from_slice(open.as_bytes());
        line.extend_from_slice(&value);
        line.extend_from_slice(close.as_bytes());
        let red = Redactor::defaults();
        let (body, _) = logveil::pipeline::record::redact_line(&line, |t| {
            red.redact_record(t, Format::Auto, &mut Counts::default(), None).text
        });
        prop_assert!(!body.contains(&format!("{first} ")), "{first} survived in {body}");
        prop_assert!(body.contains("[REDACTED:"), "nothing masked in {body}");
    }
}
