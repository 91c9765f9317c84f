//! PII field names: which keys of a JSON object, a logfmt line or a `key=value` pair in
//! free text hold PII whatever their value looks like, and which type each one is.
//!
//! A key is normalised before lookup: ASCII lower-case, with `_`, `-`, `.`, spaces and
//! `\"` removed, so `BuyerEmail`, `buyer_email`, `buyer-email` and `buyer.email` are one
//! name. A normalised key is a PII field when it equals one of the built-in names below,
//! ends with one of the built-in suffixes (`shippingaddress` ends with `address`), or is
//! one of the configured `redact.field_names`. Keys that end with a PII word but are about
//! it, not of it (`email_hash`, `phone_verified`), do not end with the word and so are not
//! fields. A value that is already masked (only `*`, `X`, `#`, `•` and separators, with at
//! most four trailing digits) is left as it is.

/// The type a field's value is counted and marked as.
pub fn builtin_field_type(norm: &str) -> Option<&'static str> {
    const EXACT: &[(&str, &str)] = &[
        ("name", "name"),
        ("fullname", "name"),
        ("firstname", "name"),
        ("lastname", "name"),
        ("givenname", "name"),
        ("familyname", "name"),
        ("surname", "name"),
        ("middlename", "name"),
        ("maidenname", "name"),
        ("displayname", "name"),
        ("recipient", "name"),
        ("holder", "name"),
        ("beneficiary", "name"),
        ("addressee", "name"),
        ("attn", "name"),
        ("mail", "email"),
        ("tel", "phone"),
        ("fax", "phone"),
        ("msisdn", "phone"),
        ("dob", "dob"),
        ("ssn", "ssn"),
        ("sin", "ssn"),
        ("tin", "vat"),
        ("ein", "vat"),
        ("vat", "vat"),
        ("gstin", "vat"),
        ("cpf", "vat"),
        ("cnpj", "vat"),
        ("rfc", "vat"),
        ("abn", "vat"),
        ("iban", "iban"),
        ("pan", "card"),
        ("cvv", "card"),
        ("cvc", "card"),
        ("password", "api_key"),
        ("passwd", "api_key"),
        ("pwd", "api_key"),
        ("secret", "api_key"),
        ("token", "api_key"),
        ("authorization", "api_key"),
        ("street", "address"),
        ("line1", "address"),
        ("line2", "address"),
        ("zip", "address"),
        ("postcode", "address"),
        ("postalcode", "address"),
    ];
    const SUFFIX: &[(&str, &str)] = &[
        ("email", "email"),
        ("emailaddress", "email"),
        ("phone", "phone"),
        ("phonenumber", "phone"),
        ("phoneno", "phone"),
        ("mobile", "phone"),
        ("mobilenumber", "phone"),
        ("telephone", "phone"),
        ("cellphone", "phone"),
        ("buyername", "name"),
        ("customername", "name"),
        ("recipientname", "name"),
        ("holdername", "name"),
        ("cardholder", "name"),
        ("accountholder", "name"),
        ("billingname", "name"),
        ("shippingname", "name"),
        ("contactname", "name"),
        ("personname", "name"),
        ("sellername", "name"),
        ("ownername", "name"),
        ("legalname", "name"),
        ("fullname", "name"),
        ("firstname", "name"),
        ("lastname", "name"),
        ("beneficiaryname", "name"),
        ("address", "address"),
        ("addressline", "address"),
        ("addressline1", "address"),
        ("addressline2", "address"),
        ("addressline3", "address"),
        ("address1", "address"),
        ("address2", "address"),
        ("address3", "address"),
        ("streetaddress", "address"),
        ("street1", "address"),
        ("street2", "address"),
        ("dateofbirth", "dob"),
        ("birthdate", "dob"),
        ("birthday", "dob"),
        ("geburtsdatum", "dob"),
        ("fechanacimiento", "dob"),
        ("socialsecuritynumber", "ssn"),
        ("vatnumber", "vat"),
        ("vatid", "vat"),
        ("vatno", "vat"),
        ("taxid", "vat"),
        ("taxnumber", "vat"),
        ("taxinfo", "vat"),
        ("taxregistrationid", "vat"),
        ("taxregistrationnumber", "vat"),
        ("businessnumber", "vat"),
        ("iban", "iban"),
        ("bankaccountnumber", "iban"),
        ("cardnumber", "card"),
        ("ccnumber", "card"),
        ("creditcard", "card"),
        ("creditcardnumber", "card"),
        ("secretaccesskey", "aws_key"),
        ("accesskeyid", "aws_key"),
        ("password", "api_key"),
        ("secret", "api_key"),
        ("clientsecret", "api_key"),
        ("apikey", "api_key"),
        ("apitoken", "api_key"),
        ("accesstoken", "api_key"),
        ("refreshtoken", "api_key"),
        ("authtoken", "api_key"),
        ("sessiontoken", "api_key"),
        ("bottoken", "api_key"),
        ("privatekey", "api_key"),
        ("secretkey", "api_key"),
        ("credentials", "api_key"),
    ];
    if let Some((_, t)) = EXACT.iter().find(|(k, _)| *k == norm) {
        return Some(t);
    }
    SUFFIX
        .iter()
        .find(|(k, _)| norm.ends_with(k))
        .map(|(_, t)| *t)
}

/// Normalises a key as raw text from the record (may hold `\"` escapes).
pub fn normalize(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        match c {
            '_' | '-' | '.' | ' ' | '\\' | '"' | '\'' => {}
            c => out.push(c.to_ascii_lowercase()),
        }
    }
    out
}

/// Short key fragments, one of which every built-in PII field name contains: a line
/// without any of them cannot have a PII field and skips the `key=value` pass.
pub const KEY_HINTS: &[&str] = &[
    "mail",
    "phone",
    "name",
    "addr",
    "street",
    "line1",
    "line2",
    "zip",
    "post",
    "birth",
    "dob",
    "ssn",
    "sin",
    "tin",
    "ein",
    "vat",
    "tax",
    "gst",
    "cpf",
    "cnpj",
    "rfc",
    "abn",
    "iban",
    "bank",
    "card",
    "pan",
    "cvv",
    "cvc",
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "auth",
    "cred",
    "holder",
    "recipient",
    "beneficiary",
    "attn",
    "tel",
    "fax",
    "mobile",
    "msisdn",
    "business",
    "geburt",
    "nacim",
];

/// Already masked by the application (`************4242`, `***-**-6789`, `XXXX-…-9367`).
pub fn already_masked(value: &str) -> bool {
    let v = value.trim();
    if v.is_empty() {
        return true;
    }
    let mut masks = 0;
    let mut digits_tail = 0;
    for c in v.chars() {
        match c {
            '*' | 'X' | 'x' | '#' | '•' | '●' => {
                if digits_tail > 0 {
                    return false;
                }
                masks += 1
            }
            '-' | ' ' | '.' | '/' => {}
            c if c.is_ascii_digit() => digits_tail += 1,
            _ => return false,
        }
    }
    masks >= 3 && digits_tail <= 4
}

/// `Type(name=GetObject)`: a bare CamelCase identifier under the generic `name` key inside
/// a code object's `toString` is the name of a thing, not of a person. Only this generic
/// key is affected; `buyer_name=` and quoted values are always fields.
pub fn code_object_attribute(text: &str, key_start: usize, value: &str) -> bool {
    let b = text.as_bytes();
    let in_object = key_start >= 2
        && matches!(b[key_start - 1], b'(' | b' ' | b',')
        && text[..key_start].rfind('(').is_some_and(|p| {
            p > 0 && b[p - 1].is_ascii_alphanumeric() && !text[p..key_start].contains(')')
        });
    let key = &text[key_start..];
    let camel = value.bytes().all(|c| c.is_ascii_alphanumeric())
        && value.as_bytes().first().is_some_and(u8::is_ascii_uppercase)
        && value
            .as_bytes()
            .windows(2)
            .any(|w| w[0].is_ascii_lowercase() && w[1].is_ascii_uppercase());
    in_object && camel && key.len() >= 4 && key[..4].eq_ignore_ascii_case("name")
}

/// Values that carry nothing: JSON literals and empty strings.
pub fn is_empty_value(value: &str) -> bool {
    matches!(
        value.trim(),
        "" | "null" | "true" | "false" | "-" | "none" | "None" | "nil"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marketplace_api_names_are_fields() {
        for (k, t) in [
            ("BuyerEmail", "email"),
            ("buyer_name", "name"),
            ("BuyerTaxInfo", "vat"),
            ("ShippingAddress", "address"),
            ("AddressLine1", "address"),
            ("date_of_birth", "dob"),
            ("Phone", "phone"),
            ("customer-email", "email"),
        ] {
            assert_eq!(builtin_field_type(&normalize(k)), Some(t), "{k}");
        }
    }

    #[test]
    fn words_about_pii_are_not_fields() {
        for k in [
            "email_hash",
            "phone_verified",
            "hostname",
            "username",
            "NextToken",
            "card",
            "account",
        ] {
            assert_eq!(builtin_field_type(&normalize(k)), None, "{k}");
        }
    }

    #[test]
    fn masked_values_are_recognised() {
        assert!(already_masked("************4242"));
        assert!(already_masked("***-**-6789"));
        assert!(already_masked("XXXX-XXXX-XXXX-9367"));
        assert!(!already_masked("4111111111111111"));
        assert!(!already_masked("Xavier"));
    }
}
