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

/// A field error's message in `lang`. English is the core's own wording; the Spanish table
/// covers what members can get wrong on a form (a message it does not know stays English).
pub fn field_message(lang: Language, e: &crate::error::FieldError) -> String {
    match lang {
        Language::En => e.message.clone(),
        Language::Es => spanish(&e.message).map_or_else(|| e.message.clone(), str::to_owned),
    }
}

fn spanish(english: &str) -> Option<&'static str> {
    Some(match english {
        "enter an amount" => "ingrese un monto",
        "enter the amount as a number, for example 125.50" => {
            "ingrese el monto como un número, por ejemplo 125.50"
        }
        "an amount can have at most two decimal places" => {
            "un monto puede tener como máximo dos decimales"
        }
        "the amount cannot be negative" => "el monto no puede ser negativo",
        "the amount must be greater than zero" => "el monto debe ser mayor que cero",
        "choose a password" => "elija una contraseña",
        "choose a username" => "elija un nombre de usuario",
        "enter a name" => "ingrese un nombre",
        "enter an email address" => "ingrese un correo electrónico",
        "enter the bank account number" => "ingrese el número de cuenta bancaria",
        "enter the card number" => "ingrese el número de tarjeta",
        "enter the payment reference number" => "ingrese el número de referencia del pago",
        "enter the routing number" => "ingrese el número de ruta",
        "enter your Social Security number" => "ingrese su número de Seguro Social",
        "enter your account number" => "ingrese su número de cuenta",
        "this password is too common; choose something others are unlikely to guess" => {
            "esta contraseña es demasiado común; elija algo que otros no puedan adivinar"
        }
        "do not use your username or email address in your password" => {
            "no use su nombre de usuario ni su correo electrónico en la contraseña"
        }
        "a password cannot contain control characters" => {
            "una contraseña no puede tener caracteres de control"
        }
        "this password repeats or runs in sequence; choose something others are unlikely to guess" => {
            "esta contraseña se repite o sigue una secuencia; elija algo que otros no puedan adivinar"
        }
        "a password cannot contain characters that change the text direction" => {
            "una contraseña no puede tener caracteres que cambien la dirección del texto"
        }
        "a password can have at most 128 characters" => {
            "una contraseña puede tener como máximo 128 caracteres"
        }
        "use at least 12 characters; a short phrase of several words is easy to remember" => {
            "use al menos 12 caracteres; una frase corta de varias palabras es fácil de recordar"
        }
        "a username needs at least 3 characters" => {
            "un nombre de usuario necesita al menos 3 caracteres"
        }
        "a username can have at most 32 characters" => {
            "un nombre de usuario puede tener como máximo 32 caracteres"
        }
        "a username can contain letters, digits, periods, hyphens and underscores, and must start with a letter or digit" => {
            "un nombre de usuario puede tener letras, dígitos, puntos, guiones y guiones bajos, y debe empezar con una letra o un dígito"
        }
        "this username is taken; choose another" => "este nombre de usuario ya existe; elija otro",
        "this email address is used by another online account" => {
            "este correo electrónico ya lo usa otra cuenta en línea"
        }
        "a name can have at most 100 characters" => {
            "un nombre puede tener como máximo 100 caracteres"
        }
        "a name can contain letters, spaces, hyphens, apostrophes and periods only" => {
            "un nombre solo puede tener letras, espacios, guiones, apóstrofos y puntos"
        }
        "an email address can have at most 254 characters" => {
            "un correo electrónico puede tener como máximo 254 caracteres"
        }
        "enter an email address like name@example.com" => {
            "ingrese un correo electrónico como nombre@ejemplo.com"
        }
        "enter 9 digits, for example 123-45-6789" => "ingrese 9 dígitos, por ejemplo 123-45-6789",
        "this is not a valid Social Security number (the first three digits cannot be 000, 666 or 900-999)" => {
            "este no es un número de Seguro Social válido (los tres primeros dígitos no pueden ser 000, 666 ni 900-999)"
        }
        "this is not a valid Social Security number (the middle two digits cannot be 00)" => {
            "este no es un número de Seguro Social válido (los dos dígitos del medio no pueden ser 00)"
        }
        "this is not a valid Social Security number (the last four digits cannot be 0000)" => {
            "este no es un número de Seguro Social válido (los cuatro últimos dígitos no pueden ser 0000)"
        }
        "enter the date as YYYY-MM-DD" => "ingrese la fecha como AAAA-MM-DD",
        "the date of birth cannot be in the future" => {
            "la fecha de nacimiento no puede ser en el futuro"
        }
        "the account holder must be at least 18 years old" => {
            "el titular de la cuenta debe tener al menos 18 años"
        }
        "check the year of the date of birth" => "revise el año de la fecha de nacimiento",
        "an account number has 6 to 20 letters and digits" => {
            "un número de cuenta tiene de 6 a 20 letras y dígitos"
        }
        "choose English (en) or Spanish (es)" => "elija inglés (en) o español (es)",
        "this payment reference number has a typo; check it against your confirmation" => {
            "este número de referencia tiene un error; revíselo con su confirmación"
        }
        "a payment reference number has 12 letters and digits, like 7KQM-2XTH-9RB4" => {
            "un número de referencia tiene 12 letras y dígitos, como 7KQM-2XTH-9RB4"
        }
        "a payment reference number uses the digits 2-9 and letters other than I, O and U" => {
            "un número de referencia usa los dígitos 2-9 y letras que no sean I, O ni U"
        }
        "the start date cannot be in the past" => "la fecha de inicio no puede ser en el pasado",
        "the start date must be within the next 12 months" => {
            "la fecha de inicio debe estar dentro de los próximos 12 meses"
        }
        "choose one of your saved payment methods" => "elija uno de sus métodos de pago guardados",
        "there is no past-due balance to put in a payment plan" => {
            "no hay un saldo vencido para un plan de pagos"
        }
        "there is already an active payment plan on this account" => {
            "ya hay un plan de pagos activo en esta cuenta"
        }
        "a payment plan has between 2 and 12 monthly installments" => {
            "un plan de pagos tiene entre 2 y 12 cuotas mensuales"
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FieldError;

    /// The table's keys are the core's actual wording: real errors come out in Spanish.
    #[test]
    fn member_form_errors_have_spanish() {
        let errors: Vec<FieldError> = vec![
            crate::password::Password::new("short", &[])
                .err()
                .map(FieldError::from),
            crate::password::Password::new("", &[])
                .err()
                .map(FieldError::from),
            crate::password::Password::new("aaaaaaaaaaaa", &[])
                .err()
                .map(FieldError::from),
            crate::password::Password::new("correct\u{202E}horse battery", &[])
                .err()
                .map(FieldError::from),
            crate::identity::Ssn::parse("000-12-3456")
                .err()
                .map(FieldError::from),
            crate::identity::Ssn::parse("12")
                .err()
                .map(FieldError::from),
            crate::identity::Email::parse("nobody")
                .err()
                .map(FieldError::from),
            crate::identity::Username::parse("a")
                .err()
                .map(FieldError::from),
            crate::identity::PersonName::parse("")
                .err()
                .map(FieldError::from),
            crate::identity::AccountNumber::parse("x")
                .err()
                .map(FieldError::from),
            crate::reference::PaymentReference::parse("AAAA")
                .err()
                .map(FieldError::from),
            crate::money::Money::parse_positive("12.345")
                .err()
                .map(FieldError::from),
        ]
        .into_iter()
        .flatten()
        .collect();
        assert_eq!(errors.len(), 12, "each input was refused");
        for e in &errors {
            let es = field_message(Language::Es, e);
            assert_ne!(es, e.message, "no Spanish for {:?}", e.message);
            assert_eq!(field_message(Language::En, e), e.message);
        }
    }
}
