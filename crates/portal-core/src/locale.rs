//! How members read dates, money and payment outcomes, in English and Spanish: shared by every
//! front end (web pages, emails) so each says the same thing the same way.

use crate::calendar::CoverageMonth;
use crate::identity::Language;
use crate::money::Money;
use crate::payment::{DeclineReason, ReturnCode};
use chrono::{Datelike, NaiveDate};

/// Formats money as `$1,234.56`.
pub fn money(m: Money) -> String {
    let cents = m.cents();
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    let whole = (abs / 100).to_string();
    let mut grouped = String::new();
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{sign}${grouped}.{:02}", abs % 100)
}

const EN_MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const ES_MONTHS: [&str; 12] = [
    "enero",
    "febrero",
    "marzo",
    "abril",
    "mayo",
    "junio",
    "julio",
    "agosto",
    "septiembre",
    "octubre",
    "noviembre",
    "diciembre",
];

fn month_name(lang: Language, m: u32) -> &'static str {
    let i = usize::try_from(m.saturating_sub(1)).unwrap_or(0).min(11);
    match lang {
        Language::En => EN_MONTHS.get(i).copied().unwrap_or(""),
        Language::Es => ES_MONTHS.get(i).copied().unwrap_or(""),
    }
}

/// A date as members read it: "March 23, 2027" / "23 de marzo de 2027".
pub fn date(lang: Language, d: NaiveDate) -> String {
    match lang {
        Language::En => format!("{} {}, {}", month_name(lang, d.month()), d.day(), d.year()),
        Language::Es => format!(
            "{} de {} de {}",
            d.day(),
            month_name(lang, d.month()),
            d.year()
        ),
    }
}

/// A coverage month: "March 2027" / "marzo de 2027".
pub fn coverage_month(lang: Language, m: CoverageMonth) -> String {
    match lang {
        Language::En => format!("{} {}", month_name(lang, m.month()), m.year()),
        Language::Es => format!("{} de {}", month_name(lang, m.month()), m.year()),
    }
}

/// Why a payment was declined, in plain language.
pub fn decline_reason(lang: Language, r: DeclineReason) -> &'static str {
    match (lang, r) {
        (Language::En, _) => r.plain_language(),
        (Language::Es, DeclineReason::InsufficientFunds) => {
            "No había fondos suficientes en la cuenta. Revise su saldo o use otro método de pago."
        }
        (Language::Es, DeclineReason::CardDeclined) => {
            "El banco que emitió su tarjeta la rechazó. Comuníquese con su banco o use otro método de pago."
        }
        (Language::Es, DeclineReason::ExpiredCard) => {
            "La tarjeta está vencida. Use una tarjeta con una fecha de vencimiento vigente."
        }
        (Language::Es, DeclineReason::IncorrectDetails) => {
            "Los datos de la tarjeta o de la cuenta bancaria no fueron aceptados. Revíselos e intente de nuevo."
        }
        (Language::Es, DeclineReason::ProcessingError) => {
            "No se pudo procesar el pago en este momento. Intente de nuevo en unos minutos."
        }
    }
}

/// Why a bank transfer was returned, in plain language, with its return code.
pub fn return_reason(lang: Language, code: ReturnCode) -> String {
    match lang {
        Language::En => format!("{} (return code {code})", code.plain_language()),
        Language::Es => {
            let why = match code.to_string().as_str() {
                "R01" | "R09" => "Su banco devolvió el pago porque no había fondos suficientes.",
                "R02" => "Su banco devolvió el pago porque la cuenta está cerrada.",
                "R03" | "R04" => {
                    "Su banco no encontró la cuenta. Revise el número de cuenta y el número de ruta."
                }
                "R07" | "R10" | "R29" => {
                    "Su banco devolvió el pago porque se informó que no estaba autorizado."
                }
                _ => "Su banco devolvió el pago. Comuníquese con su banco para más detalles.",
            };
            format!("{why} (código de devolución {code})")
        }
    }
}
