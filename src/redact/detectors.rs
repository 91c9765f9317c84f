//! The built-in free-text detectors, in precedence order: a type, a rule name, a pattern
//! (the candidate), the capture group that is the value (0: the whole match; context
//! detectors match a keyword and capture the value after it), and a validator.
//!
//! Patterns are deliberately loose and validators strict: the pattern finds candidates
//! in one multi-pattern pass, the validator decides (checksums, ranges, what the
//! candidate is glued to, keywords before it).

use super::validate::{self, Validator};

pub struct Builtin {
    pub kind: &'static str,
    pub rule: &'static str,
    pub pattern: &'static str,
    pub group: usize,
    pub validate: Validator,
    /// Prefilter (see [`super::prefilter`]): necessary conditions for the pattern to match
    /// at all. One of `hints` must occur (ASCII case-insensitively) unless it is empty…
    pub hints: &'static [&'static str],
    /// …the text must hold at least `digits` ASCII digits…
    pub digits: u8,
    /// …and at least `n` of each byte `b` in `(b, n)`. Loosening a pattern must loosen these.
    pub bytes: &'static [(u8, u8)],
}

/// The literal forms of [`at!`], for the e-mail prefilter.
const AT_FORMS: &[&str] = &[
    "@", "%40", "%2540", "\\u0040", "\\x40", "=40", "&#64;", "&#x40;",
];

/// An e-mail `@` in its plain, URL-encoded (once or twice), JSON-escaped,
/// quoted-printable and HTML-entity forms.
macro_rules! at {
    () => {
        r"(?:@|%40|%2540|\\u0040|\\x40|=40|&#64;|&#x40;)"
    };
}

macro_rules! local {
    () => {
        r"[A-Za-z0-9._%+\-]+"
    };
}

pub const BUILTINS: &[Builtin] = &[
    Builtin {
        kind: "marketplace_email",
        rule: "marketplace_email",
        pattern: concat!(
            r"(?i-u)",
            local!(),
            at!(),
            r"marketplace\.amazon(?:\.[a-z]{2,3}){1,2}"
        ),
        group: 0,
        validate: validate::email,
        hints: &["marketplace"],
        digits: 0,
        bytes: &[],
    },
    Builtin {
        kind: "email",
        rule: "email",
        pattern: concat!(
            r"(?i-u)",
            local!(),
            at!(),
            r"(?:[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?\.)+[a-z]{2,24}"
        ),
        group: 0,
        validate: validate::email,
        hints: AT_FORMS,
        digits: 0,
        bytes: &[],
    },
    Builtin {
        kind: "jwt",
        rule: "jwt",
        pattern: r"(?-u)eyJ[A-Za-z0-9_\-]{6,}\.eyJ[A-Za-z0-9_\-]{6,}\.[A-Za-z0-9_\-]*",
        group: 0,
        validate: validate::jwt,
        hints: &["eyJ"],
        digits: 0,
        bytes: &[],
    },
    Builtin {
        kind: "aws_key",
        rule: "aws_access_key_id",
        pattern: r"(?-u)\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA|ASCA)[A-Z0-9]{16}\b",
        group: 0,
        validate: validate::any,
        hints: &[
            "AKIA", "ASIA", "ABIA", "ACCA", "AGPA", "AIDA", "AIPA", "ANPA", "ANVA", "AROA", "APKA",
            "ASCA",
        ],
        digits: 0,
        bytes: &[],
    },
    Builtin {
        kind: "aws_key",
        rule: "aws_secret_access_key",
        pattern: r#"(?i-u)(?:secret_?access_?key|aws_?secret(?:_?key)?|secret_?key)["']?\s*[:=]\s*["']?([A-Za-z0-9/+]{40})"#,
        group: 1,
        validate: validate::secret40,
        hints: &["secret"],
        digits: 0,
        bytes: &[],
    },
    Builtin {
        kind: "api_key",
        rule: "api_token_prefix",
        pattern: r"(?-u)(?:Atz[ar]\|[A-Za-z0-9_\-|]{20,}|amzn1\.oa2-cs\.v1\.[A-Za-z0-9]{20,}|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}|xox[abposr]-[A-Za-z0-9\-]{10,}|AIza[A-Za-z0-9_\-]{30,}|SG\.[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,}|shp(?:at|ss|ca|pa)_[a-fA-F0-9]{32}|glpat-[A-Za-z0-9_\-]{20,}|npm_[A-Za-z0-9]{36}|whsec_[A-Za-z0-9]{24,}|sq0[a-z]{3}-[A-Za-z0-9_\-]{22,})",
        group: 0,
        validate: validate::any,
        hints: &[
            "Atza|",
            "Atzr|",
            "amzn1.oa2-cs.v1.",
            "_live_",
            "_test_",
            "ghp_",
            "gho_",
            "ghu_",
            "ghs_",
            "ghr_",
            "github_pat_",
            "xox",
            "AIza",
            "SG.",
            "shp",
            "glpat-",
            "npm_",
            "whsec_",
            "sq0",
        ],
        digits: 0,
        bytes: &[],
    },
    Builtin {
        kind: "api_key",
        rule: "http_authorization",
        pattern: r"(?i-u)\b(?:basic|bearer|token|digest)\s+([A-Za-z0-9+/_\-.~]{12,}=*)",
        group: 1,
        validate: validate::auth_credential,
        hints: &["basic", "bearer", "token", "digest"],
        digits: 0,
        bytes: &[],
    },
    Builtin {
        kind: "api_key",
        rule: "url_credentials",
        pattern: r"(?i-u)[a-z][a-z0-9+.\-]*://([a-z0-9._~%!$&*+;=\-]+:[a-z0-9._~%!$&*+;=\-]+)@",
        group: 1,
        validate: validate::any,
        hints: &["://"],
        digits: 0,
        bytes: &[(b'@', 1), (b':', 2)],
    },
    Builtin {
        kind: "order_id",
        rule: "order_id",
        pattern: r"(?-u)\b\d{3}-\d{7}-\d{7}\b",
        group: 0,
        validate: validate::bounded,
        hints: &[],
        digits: 17,
        bytes: &[(b'-', 2)],
    },
    Builtin {
        kind: "card",
        rule: "card",
        pattern: r"(?-u)\d(?:[ \-+]?\d){12,18}",
        group: 0,
        validate: validate::card,
        hints: &[],
        digits: 13,
        bytes: &[],
    },
    Builtin {
        kind: "iban",
        rule: "iban",
        pattern: r"(?-u)\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}",
        group: 0,
        validate: validate::iban,
        hints: &[],
        digits: 2,
        bytes: &[],
    },
    Builtin {
        kind: "ssn",
        rule: "ssn",
        pattern: r"(?-u)\b\d{3}[\- ]\d{2}[\- ]\d{4}\b",
        group: 0,
        validate: validate::ssn,
        hints: &[],
        digits: 9,
        bytes: &[],
    },
    Builtin {
        kind: "ssn",
        rule: "ssn_in_context",
        pattern: r#"(?i-u)\b(?:ssn|social security(?: number| no\.?)?|ss#|sozialversicherungsnummer)[\s:=#"'\\]{0,6}(\d{9}|\d{3}[ .\-]\d{2}[ .\-]\d{4})\b"#,
        group: 1,
        validate: validate::ssn_plain,
        hints: &["ssn", "social security", "ss#", "sozialversicherungsnummer"],
        digits: 9,
        bytes: &[],
    },
    Builtin {
        kind: "vat",
        rule: "vat_id",
        pattern: r"(?-u)\b(?:ATU\d{8}|BE ?[01]\d{9}|BG ?\d{9,10}|CY ?\d{8}[A-Z]|CZ ?\d{8,10}|DE ?\d{9}|DK ?\d{8}|EE ?\d{9}|EL ?\d{9}|ES ?[A-Z0-9]\d{7}[A-Z0-9]|FI ?\d{8}|FR ?[A-HJ-NP-Z0-9]{2}\d{9}|HR ?\d{11}|HU ?\d{8}|IE ?\d{7}[A-W][A-I]?|IT ?\d{11}|LT ?\d{9}(?:\d{3})?|LU ?\d{8}|LV ?\d{11}|MT ?\d{8}|NL ?\d{9}B\d{2}|PL ?\d{10}|PT ?\d{9}|RO ?\d{6,10}|SE ?\d{12}|SI ?\d{8}|SK ?\d{10}|GB ?\d{9}(?:\d{3})?|XI ?\d{9}|CHE[- ]?\d{3}\.?\d{3}\.?\d{3}|\d{2}[A-Z]{5}\d{4}[A-Z][1-9A-Z]Z[0-9A-Z]|T\d{13}|[A-Z&]{3,4}\d{6}[A-Z0-9]{3}|\d{3}\.\d{3}\.\d{3}-\d{2}|\d{9} ?RT ?\d{4})\b",
        group: 0,
        validate: validate::vat,
        hints: &[],
        digits: 6,
        bytes: &[],
    },
    Builtin {
        kind: "vat",
        rule: "abn",
        pattern: r"(?-u)\b\d{2} \d{3} \d{3} \d{3}\b",
        group: 0,
        validate: validate::abn,
        hints: &[],
        digits: 11,
        bytes: &[(b' ', 3)],
    },
    Builtin {
        kind: "vat",
        rule: "tax_id_in_context",
        pattern: r#"(?i-u)\b(?:ein|tin|tax[ _\-]?(?:id|no|number)|vat(?:[ _\-]?(?:id|no|number|reg(?:istration)?))?|gstin|abn|bn|rfc|cpf|nif|steuer-?nr|ust-?idnr|partita iva)\b[\s:=#"'\\]{0,6}((?:[A-Z]{1,4}[ \-]?)?\d[\d .\-/]{6,18}\d[A-Z]?\d{0,2})"#,
        group: 1,
        validate: validate::tax_in_context,
        hints: &[
            "ein",
            "tin",
            "tax",
            "vat",
            "bn",
            "rfc",
            "cpf",
            "nif",
            "steuer",
            "ust",
            "partita iva",
        ],
        digits: 2,
        bytes: &[],
    },
    Builtin {
        kind: "phone",
        rule: "phone_international",
        pattern: r"(?-u)\+\d{1,3}(?:[ .\-]?(?:\(\d{1,4}\)|\d{1,5})){1,7}(?:\s?(?:x|ext\.?)\s?\d{1,5})?",
        group: 0,
        validate: validate::phone_intl,
        hints: &[],
        digits: 2,
        bytes: &[(b'+', 1)],
    },
    Builtin {
        kind: "phone",
        rule: "phone_nanp",
        pattern: r"(?-u)(?:\b1[ .\-]?)?(?:\(\d{3}\)[ .\-]?|\b\d{3}[.\-])\d{3}[.\-]\d{4}(?:\s?(?:x|ext\.?)\s?\d{1,5})?",
        group: 0,
        validate: validate::phone_nanp,
        hints: &[],
        digits: 10,
        bytes: &[],
    },
    Builtin {
        kind: "phone",
        rule: "phone_national",
        pattern: r"(?-u)(?:\(\d{2,5}\)[ .\-]?\d[\d .\-/]{4,14}\d|\d[\d .\-/]{7,16}\d)(?:\s?(?:x|ext\.?)\s?\d{1,5})?",
        group: 0,
        validate: validate::phone_national,
        hints: &[],
        digits: 2,
        bytes: &[],
    },
    Builtin {
        kind: "ipv4",
        rule: "ipv4",
        pattern: r"(?-u)\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}",
        group: 0,
        validate: validate::ipv4,
        hints: &[],
        digits: 4,
        bytes: &[(b'.', 3)],
    },
    Builtin {
        kind: "ipv6",
        rule: "ipv6",
        pattern: r"(?i-u)[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}(?:(?:\d{1,3}\.){3}\d{1,3})?",
        group: 0,
        validate: validate::ipv6,
        hints: &[],
        digits: 0,
        bytes: &[(b':', 2)],
    },
    Builtin {
        kind: "dob",
        rule: "dob_in_context",
        pattern: r#"(?i-u)(?:\b(?:dob|d\.o\.b\.?|date[ _\-]?of[ _\-]?birth|birth[ _\-]?date|birthday|born(?: on)?|geb(?:oren|urtsdatum)?\.?|n(?:é|e)e? le|fecha de nacimiento|nacid[oa](?: el)?|data di nascita|nat[oa] il|data de nascimento|geboortedatum|geboren op|född|urodzon[ya]|data urodzenia|doğum tarihi)|生年月日|生まれ)[\s:=#"'(\\]{0,6}(\d{4}-\d{2}-\d{2}|\d{4}/\d{1,2}/\d{1,2}|\d{1,2}[./\-]\d{1,2}[./\-]\d{2,4}|\d{1,2}\.? [a-z]{3,9}\.? \d{4}|[a-z]{3,9}\.? \d{1,2},? \d{4}|\d{4}年\d{1,2}月\d{1,2}日)"#,
        group: 1,
        validate: validate::any,
        hints: &[
            "dob",
            "d.o.b",
            "date",
            "birth",
            "born",
            "geb",
            "e le",
            "é le",
            "fecha de nacimiento",
            "nacid",
            "data di nascita",
            "nato il",
            "nata il",
            "data de nascimento",
            "född",
            "urodzon",
            "data urodzenia",
            "doğum tarihi",
            "生年月日",
            "生まれ",
        ],
        digits: 4,
        bytes: &[],
    },
];

/// The built-in type names, in the order markers and counts know them. Types without a
/// free-text detector (`name`, `address`) come from field names only.
pub const TYPES: &[&str] = &[
    "email",
    "marketplace_email",
    "phone",
    "name",
    "address",
    "order_id",
    "card",
    "iban",
    "ssn",
    "vat",
    "dob",
    "ipv4",
    "ipv6",
    "jwt",
    "aws_key",
    "api_key",
];
